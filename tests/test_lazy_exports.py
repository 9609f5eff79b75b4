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
