"""The root group attributes of a store: those of a new store, and reading them back."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vlmfast import _native
from vlmfast.errors import StoreError, StoreFormatError
from vlmfast.store.schema import (
    ATTR_BOXES,
    ATTR_CHUNK_ROWS,
    ATTR_COMMITTED_BOX_ROWS,
    ATTR_COMMITTED_LABEL_ROWS,
    ATTR_COMMITTED_ROWS,
    ATTR_COMPRESSION,
    ATTR_CONCEPTS,
    ATTR_DATASET,
    ATTR_DTYPE,
    ATTR_FORMAT_VERSION,
    ATTR_HOOKS,
    ATTR_MODEL,
    ATTR_POSITIONS,
    ATTR_PROGRESS,
    ATTR_SHARD_INNER_ROWS,
    ATTR_SKIPPED_NONFINITE,
    ATTR_TOWERS,
    ATTR_USER,
    ATTR_WRITER,
    CONCEPT_CAPTION_LABELS,
    CONCEPT_IMAGE_BASIS,
    CONCEPT_KINDS,
    CONCEPT_NAMES,
    FORMAT_VERSION,
    HOOK_MODALITY,
    HOOK_WIDTH,
    MODALITIES,
    REQUIRED_ATTRS,
    WRITER,
    hook_modality,
)


def is_store(path: Path) -> bool:
    """Whether ``path`` holds a zarr group (what a store is made of)."""
    return (path / "zarr.json").is_file()


def new_attrs(
    hooks: Mapping[str, int],
    dtype: str,
    *,
    chunk_rows: int,
    compression: str,
    shard_inner_rows: int | None,
    model: Mapping[str, Any] | None,
    dataset: Mapping[str, Any] | None,
    positions: str | None,
    concepts: tuple[list[str], list[str]] | None,
    attrs: Mapping[str, Any] | None,
    image_basis: str,
    towers: Mapping[str, Any] | None,
    boxes: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The root attributes of a new, empty store (see ``ActivationStore.create``)."""
    return {
        ATTR_FORMAT_VERSION: FORMAT_VERSION,
        ATTR_WRITER: WRITER,
        ATTR_MODEL: dict(model or {}),
        ATTR_DATASET: dict(dataset or {}),
        ATTR_HOOKS: {
            h: {HOOK_WIDTH: int(w), HOOK_MODALITY: hook_modality(h)} for h, w in hooks.items()
        },
        ATTR_DTYPE: dtype,
        ATTR_POSITIONS: positions,
        ATTR_CHUNK_ROWS: int(chunk_rows),
        ATTR_COMPRESSION: compression,
        ATTR_SHARD_INNER_ROWS: shard_inner_rows,
        ATTR_CONCEPTS: (
            None
            if concepts is None
            else {
                CONCEPT_NAMES: list(concepts[0]),
                CONCEPT_KINDS: list(concepts[1]),
                CONCEPT_CAPTION_LABELS: True,
                CONCEPT_IMAGE_BASIS: image_basis,
            }
        ),
        ATTR_COMMITTED_ROWS: {h: 0 for h in hooks},
        ATTR_COMMITTED_LABEL_ROWS: 0,
        ATTR_SKIPPED_NONFINITE: {h: 0 for h in hooks},
        ATTR_PROGRESS: {},
        ATTR_TOWERS: dict(towers or {}),
        **({ATTR_BOXES: dict(boxes), ATTR_COMMITTED_BOX_ROWS: 0} if boxes else {}),
        ATTR_USER: dict(attrs or {}),
    }


def write_attrs(root: str | os.PathLike[str], attrs: Mapping[str, Any]) -> None:
    """Writes the root attributes atomically and durably (a commit's commit point)."""
    _native.store_write_group(str(root), "/", json.dumps(attrs))


def read_attrs(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Returns the root attributes of the store at ``path``; a clear error when it is not one.

    Raises:
        StoreError: ``path`` does not exist.
        StoreFormatError: ``path`` is not a vlmfast store, or its attributes are incomplete.
    """
    p = Path(path)
    if not p.exists():
        raise StoreError(f"{p} does not exist")
    if not is_store(p):
        raise StoreFormatError(f"{p} is not a vlmfast store (no zarr.json group metadata)")
    try:
        attrs = json.loads(_native.store_read_group_attrs(str(p), "/"))
    except StoreError as err:
        raise StoreFormatError(f"{p} is not a vlmfast store: {err}") from err
    version = attrs.get(ATTR_FORMAT_VERSION)
    if attrs.get(ATTR_WRITER) != WRITER or not isinstance(version, int):
        raise StoreFormatError(f"{p} is a zarr group but not a vlmfast activation store")
    if version > FORMAT_VERSION:
        raise StoreFormatError(
            f"{p} has store format version {version}; this vlmfast reads up to "
            f"{FORMAT_VERSION}: upgrade vlmfast"
        )
    for key in REQUIRED_ATTRS:
        if key not in attrs:
            raise StoreFormatError(f"{p}: store attributes lack {key!r}")
    bad = [h for h, s in attrs[ATTR_HOOKS].items() if s.get(HOOK_MODALITY) not in MODALITIES]
    if bad:
        raise StoreFormatError(f"{p}: hooks {bad} have no valid modality")
    return attrs
