"""The activation store: zarr v3 arrays of activation rows, written and read in Rust.

from vlmfast.store import ActivationStore
store = ActivationStore.create("acts.zarr", {"image.embed": 512}, dtype="float16")
store.append("image.embed", rows)                # durable when it returns
for batch in store.batches("image.embed", 4096, shuffle=True, seed=0):
    ...
"""

from __future__ import annotations

from vlmfast.store.activation_store import ActivationStore, read_attrs
from vlmfast.store.layout import FORMAT_VERSION, Labels, StoreIndex

__all__ = ["FORMAT_VERSION", "ActivationStore", "Labels", "StoreIndex", "read_attrs"]
