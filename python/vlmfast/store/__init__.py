"""The activation store: zarr v3 arrays of activation rows, written and read in Rust.

from vlmfast.store import ActivationStore
store = ActivationStore.create("acts.zarr", {"image.embed": 512}, dtype="float16")
store.append("image.embed", rows)                # durable when it returns
for batch in store.batches("image.embed", 4096, shuffle=True, seed=0):
    ...
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vlmfast.store.activation_store import ActivationStore, read_attrs
    from vlmfast.store.layout import FORMAT_VERSION, Labels, StoreIndex

# Imported lazily (PEP 562): ``from vlmfast.store.zarr_bfloat16 import register``
# is how a zarr-python reader without vlmfast's other parts reads bf16 stores, and
# importing this package must then not pull in torch.
_LAZY_ATTRS: dict[str, str] = {
    "ActivationStore": "vlmfast.store.activation_store",
    "read_attrs": "vlmfast.store.activation_store",
    "FORMAT_VERSION": "vlmfast.store.layout",
    "Labels": "vlmfast.store.layout",
    "StoreIndex": "vlmfast.store.layout",
}

__all__ = ["FORMAT_VERSION", "ActivationStore", "Labels", "StoreIndex", "read_attrs"]


def __getattr__(name: str) -> Any:
    module = _LAZY_ATTRS.get(name)
    if module is None:
        raise AttributeError(f"module 'vlmfast.store' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
