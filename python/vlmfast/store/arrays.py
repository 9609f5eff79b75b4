"""The store's arrays in the native core: creating and opening one, and which exist.

``vlmfast._native`` does the I/O; a handle (``StoreArray``) appends rows, writes
whole chunks at an offset (``write_at``) and reads committed rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vlmfast import _native
from vlmfast.store.schema import (
    ATTR_BOXES,
    ATTR_COMMITTED_BOX_ROWS,
    ATTR_COMMITTED_LABEL_ROWS,
    ATTR_COMMITTED_ROWS,
    ATTR_CONCEPTS,
    ATTR_HOOKS,
    BOX_ARRAYS,
    CONCEPT_CAPTION_LABELS,
    LABELS_ARRAY,
    LABELS_CAPTION_ARRAY,
    LABELS_SAMPLE_ARRAY,
    hook_arrays,
)


def open_array(root: str, name: str, rows: int, writable: bool) -> Any:
    """A handle on the array ``name`` of the store at ``root`` with ``rows`` committed
    rows (``writable``: appending; rows past ``rows`` are dropped)."""
    return _native.store_open_array(root, name, rows, writable)


def create_array(
    root: str,
    name: str,
    dtype: str,
    width: int | None,
    chunk_rows: int,
    compression: str,
    compression_level: int = 3,
    shard_inner_rows: int | None = None,
    *,
    dims: list[str],
) -> None:
    """An empty array ``name`` (``[0]`` or ``[0, width]``) in the store at ``root``."""
    _native.store_create_array(
        root,
        name,
        dtype,
        width,
        chunk_rows,
        compression,
        compression_level,
        shard_inner_rows,
        dims=dims,
    )


def label_arrays(attrs: Mapping[str, Any]) -> list[str]:
    """The label arrays of a store with concepts (rows aligned: one per labelled sample)."""
    names = [LABELS_ARRAY, LABELS_SAMPLE_ARRAY]
    if (attrs.get(ATTR_CONCEPTS) or {}).get(CONCEPT_CAPTION_LABELS):
        names.append(LABELS_CAPTION_ARRAY)
    return names


def open_arrays(root: str, attrs: Mapping[str, Any], writable: bool) -> dict[str, Any]:
    """Handles on every array of the store at ``root`` described by ``attrs`` (each
    hook's, then the labels', then the boxes'), at their committed row counts."""
    arrays: dict[str, Any] = {}
    committed = attrs[ATTR_COMMITTED_ROWS]
    for hook in attrs[ATTR_HOOKS]:
        n = int(committed[hook])
        for name in hook_arrays(hook):
            arrays[name] = open_array(root, name, n, writable)
    if attrs.get(ATTR_CONCEPTS) is not None:
        n = int(attrs[ATTR_COMMITTED_LABEL_ROWS])
        for name in label_arrays(attrs):
            arrays[name] = open_array(root, name, n, writable)
    if attrs.get(ATTR_BOXES):
        n = int(attrs.get(ATTR_COMMITTED_BOX_ROWS, 0))
        for name in BOX_ARRAYS:
            arrays[name] = open_array(root, name, n, writable)
    return arrays
