"""Making a new store on disk: the arguments checked, the groups and empty arrays
written in a sibling folder, then renamed into place (a store appears atomically)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from vlmfast import _native
from vlmfast.errors import HookNameError, InputError, StoreError
from vlmfast.store.arrays import create_array
from vlmfast.store.attrs import is_store, write_attrs
from vlmfast.store.box_arrays import create_box_arrays
from vlmfast.store.convert import ACT_DTYPES, dtype_name
from vlmfast.store.schema import (
    ACTS_GROUP,
    ATTR_BOXES,
    ATTR_CHUNK_ROWS,
    ATTR_COMPRESSION,
    ATTR_CONCEPTS,
    ATTR_DTYPE,
    ATTR_SHARD_INNER_ROWS,
    CONCEPT_NAMES,
    INDEX_FIELDS,
    INDEX_GROUP,
    LABELS_ARRAY,
    LABELS_CAPTION_ARRAY,
    LABELS_DIMS,
    LABELS_GROUP,
    LABELS_SAMPLE_ARRAY,
    acts_array,
    acts_dims,
    index_array,
    index_dims,
    index_group,
)


def check_create_args(
    target: Path,
    hooks: Mapping[str, int],
    dtype: str | torch.dtype,
    chunk_rows: int,
    concepts: tuple[list[str], list[str]] | None,
    overwrite: bool,
) -> str:
    """Validates the arguments of ``ActivationStore.create``; returns the dtype name."""
    name = dtype_name(dtype)
    if name not in ACT_DTYPES:
        raise InputError(f"dtype {name} is not an activation dtype ({', '.join(ACT_DTYPES)})")
    if not hooks:
        raise InputError("hooks is empty: name at least one hook and its width")
    for hook, width in hooks.items():
        if not isinstance(hook, str) or not hook or "/" in hook:
            raise HookNameError(f"hook name {hook!r} is not valid in a store")
        if int(width) <= 0:
            raise InputError(f"hook {hook}: width must be > 0, got {width}")
    if chunk_rows <= 0:
        raise InputError(f"chunk_rows must be > 0, got {chunk_rows}")
    if concepts is not None and len(concepts[0]) != len(concepts[1]):
        raise InputError(f"concepts: {len(concepts[0])} names but {len(concepts[1])} kinds")
    if target.exists():
        if not overwrite:
            raise StoreError(f"{target} already exists; pass overwrite=True to replace it")
        if not (is_store(target) or (target.is_dir() and not any(target.iterdir()))):
            raise StoreError(f"{target} exists and is not a vlmfast store; refusing to delete it")
    return name


def write_new_store(
    target: Path, hooks: Mapping[str, int], attrs: Mapping[str, Any], compression_level: int
) -> None:
    """Writes an empty store with root attributes ``attrs`` (from ``attrs.new_attrs``) at
    ``target`` (replacing what is there): built in a sibling folder, renamed into place."""
    tmp = target.with_name(f".{target.name}.creating-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    root = str(tmp)
    chunk_rows = int(attrs[ATTR_CHUNK_ROWS])
    compression = str(attrs[ATTR_COMPRESSION])
    concepts = attrs[ATTR_CONCEPTS]
    try:
        _create_arrays(
            root,
            hooks,
            str(attrs[ATTR_DTYPE]),
            chunk_rows,
            compression,
            compression_level,
            attrs[ATTR_SHARD_INNER_ROWS],
            None if concepts is None else len(concepts[CONCEPT_NAMES]),
        )
        if attrs.get(ATTR_BOXES):
            if concepts is None:
                raise InputError("boxes need concepts (the columns of their labels)")
            create_box_arrays(root, chunk_rows, compression, len(concepts[CONCEPT_NAMES]))
        write_attrs(root, attrs)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _create_arrays(
    root: str,
    hooks: Mapping[str, int],
    dtype: str,
    chunk_rows: int,
    compression: str,
    compression_level: int,
    shard_inner_rows: int | None,
    n_concepts: int | None,
) -> None:
    """Writes the group nodes and empty arrays of a new store under ``root``."""
    for group in (ACTS_GROUP, INDEX_GROUP, LABELS_GROUP):
        _native.store_write_group(root, f"/{group}", "{}")
    for hook, width in hooks.items():
        _native.store_write_group(root, f"/{index_group(hook)}", "{}")
        create_array(
            root,
            acts_array(hook),
            dtype,
            int(width),
            int(chunk_rows),
            compression,
            compression_level,
            shard_inner_rows,
            dims=acts_dims(hook),
        )
        for field, fdtype in INDEX_FIELDS.items():
            create_array(
                root,
                index_array(hook, field),
                fdtype,
                None,
                int(chunk_rows),
                compression,
                dims=index_dims(hook),
            )
    if n_concepts is not None:
        width = max(n_concepts, 1)
        for name in (LABELS_ARRAY, LABELS_CAPTION_ARRAY):
            create_array(root, name, "bool", width, int(chunk_rows), compression, dims=LABELS_DIMS)
        create_array(
            root,
            LABELS_SAMPLE_ARRAY,
            "int64",
            None,
            int(chunk_rows),
            compression,
            dims=LABELS_DIMS[:1],
        )
