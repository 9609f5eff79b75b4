"""The storage engine: zarr v3 arrays of activation rows, written and read in Rust.

from vlmfast.store import ActivationStore
store = ActivationStore.create("acts.zarr", {"image.embed": 512}, dtype="float16")
store.append("image.embed", rows)                # durable when it returns
for batch in store.batches("image.embed", 4096, shuffle=True, seed=0):
    ...

What lives here is the engine over ``vlmfast._native`` and nothing about models or
data: the schema (``schema``: every array path, attribute key and format version),
creating and opening a store, the one commit protocol (``commit``), streaming reads,
the bfloat16 codec for zarr-python, and the records reads return. Caching a model's
activations over a data source into a store is the application above it,
``vlmfast.caching`` (its names are still reachable here, deprecated, for one release).
"""

from __future__ import annotations

import importlib
import warnings
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vlmfast.store.activation_store import ActivationStore, read_attrs
    from vlmfast.store.patch_grid import PatchGrid, patch_labels
    from vlmfast.store.records import BoxRows, Labels, StoreIndex
    from vlmfast.store.schema import FORMAT_VERSION

# Imported lazily (PEP 562): ``from vlmfast.store.zarr_bfloat16 import register``
# is how a zarr-python reader without vlmfast's other parts reads bf16 stores, and
# importing this package must then not pull in torch.
_LAZY_ATTRS: dict[str, str] = {
    "ActivationStore": "vlmfast.store.activation_store",
    "read_attrs": "vlmfast.store.activation_store",
    "FORMAT_VERSION": "vlmfast.store.schema",
    "Labels": "vlmfast.store.records",
    "StoreIndex": "vlmfast.store.records",
    "BoxRows": "vlmfast.store.records",
    "PatchGrid": "vlmfast.store.patch_grid",
    "patch_labels": "vlmfast.store.patch_grid",
}

# Names that moved to ``vlmfast.caching`` (deprecated here; removed in the next release).
# Imported by name (importlib), so the engine never imports the application.
_MOVED_TO_CACHING: dict[str, str] = {
    "CacheConfig": "vlmfast.caching",
    "run_cache": "vlmfast.caching",
    "CacheSetup": "vlmfast.caching",
    "setup_cache": "vlmfast.caching",
    "iter_forward": "vlmfast.caching",
    "forward_rows": "vlmfast.caching",
    "weights_hash": "vlmfast.caching",
    "cache": "vlmfast.caching.cache",
    "cache_ranks": "vlmfast.caching.ranks",
    "cache_scan": "vlmfast.caching.scan",
    "rows": "vlmfast.caching.rows",
}

__all__ = [
    "FORMAT_VERSION",
    "ActivationStore",
    "BoxRows",
    "Labels",
    "PatchGrid",
    "StoreIndex",
    "patch_labels",
    "read_attrs",
]


def __getattr__(name: str) -> Any:
    module = _LAZY_ATTRS.get(name)
    if module is not None:
        return getattr(importlib.import_module(module), name)
    moved = _MOVED_TO_CACHING.get(name)
    if moved is None:
        raise AttributeError(f"module 'vlmfast.store' has no attribute {name!r}")
    target = importlib.import_module(moved)
    is_module = moved.rpartition(".")[2] != "caching"
    where = moved if is_module else f"{moved}.{name}"
    warnings.warn(
        f"vlmfast.store.{name} moved to {where}; the old name goes away in the next release",
        DeprecationWarning,
        stacklevel=2,
    )
    return target if is_module else getattr(target, name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
