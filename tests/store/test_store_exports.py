"""``vlmfast.store``'s public names, and the caching names it keeps for one release."""

from __future__ import annotations

import subprocess
import sys

import pytest

import vlmfast.caching
import vlmfast.store


def test_public_names_resolve() -> None:
    for name in vlmfast.store.__all__:
        assert getattr(vlmfast.store, name) is not None, name
    for name in vlmfast.caching.__all__:
        assert getattr(vlmfast.caching, name) is not None, name


@pytest.mark.parametrize("name", ["run_cache", "CacheConfig", "setup_cache", "iter_forward"])
def test_moved_names_warn_and_resolve(name: str) -> None:
    with pytest.warns(DeprecationWarning, match=f"vlmfast.caching.{name}"):
        old = getattr(vlmfast.store, name)
    assert old is getattr(vlmfast.caching, name)


def test_old_module_attribute_warns() -> None:
    from vlmfast.caching import cache

    with pytest.warns(DeprecationWarning, match="vlmfast.caching.cache"):
        assert vlmfast.store.cache is cache


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        vlmfast.store.nope  # noqa: B018


def test_engine_imports_neither_caching_nor_torch() -> None:
    code = (
        "import sys, vlmfast.store, vlmfast.store.schema, vlmfast.store.zarr_bfloat16\n"
        "print(sorted(m for m in ('torch', 'vlmfast.caching') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
