"""Every lazily exported name of a package loads, is listed, and unknown names fail."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

PACKAGES = [
    "vlmfast.causal",
    "vlmfast.causal.core",
    "vlmfast.caching",
    "vlmfast.sae",
    "vlmfast.crossmodal",
]


@pytest.mark.parametrize("package", PACKAGES)
def test_every_export_loads_and_unknown_names_fail(package: str) -> None:
    module = importlib.import_module(package)
    for name in module.__all__:
        assert getattr(module, name) is not None, name
    assert set(module.__all__) <= set(dir(module))
    with pytest.raises(AttributeError, match=f"{package}.*no_such_name"):
        _ = module.no_such_name


@pytest.mark.parametrize("package", ["vlmfast.causal", "vlmfast.sae", "vlmfast.crossmodal"])
def test_importing_the_package_loads_nothing_heavy(package: str) -> None:
    code = f"import sys, {package}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_submodules_are_served() -> None:
    import vlmfast.causal as causal

    assert causal.circuits.__name__ == "vlmfast.causal.circuits"


@pytest.mark.parametrize("package", [*PACKAGES, "vlmfast.store", "vlmfast"])
def test_no_export_shares_its_name_with_a_submodule(package: str) -> None:
    """A lazily exported function named like a submodule of its package is shadowed by
    that module as soon as anything imports the submodule (the import system sets the
    package attribute), so `from package import name` returns a module, depending on
    import order. Exports and submodules must have different names."""
    import pkgutil

    module = importlib.import_module(package)
    submodules = {m.name for m in pkgutil.iter_modules(module.__path__)}
    lazy = set(getattr(module, "_LAZY_ATTRS", {})) & set(module.__all__)
    assert not lazy & submodules, f"{package}: exports named like submodules: {lazy & submodules}"


def test_exports_stay_functions_after_their_module_is_imported() -> None:
    code = (
        "import importlib, vlmfast.crossmodal as x, vlmfast.store as s, vlmfast.causal.core as c;"
        "importlib.import_module('vlmfast.crossmodal.grounding_source');"
        "importlib.import_module('vlmfast.store.patch_grid');"
        "importlib.import_module('vlmfast.causal.core.unit_ranking');"
        "importlib.import_module('vlmfast.causal.core.activations');"
        "from vlmfast.crossmodal import grounding_inputs;"
        "from vlmfast.store import patch_labels;"
        "from vlmfast.causal.core import top_units, unit_activations;"
        "print(all(callable(f) and not hasattr(f, '__path__') and type(f).__name__ == 'function'"
        " for f in (grounding_inputs, patch_labels, top_units, unit_activations)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
