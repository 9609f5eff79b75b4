"""``ActivationStore``: a crash-safe zarr v3 store of activation rows (Rust I/O).

Writes go through the native core (``vlmfast._native``): complete chunks are
encoded and written to temp files as rows arrive; ``commit`` writes the partial last
chunks and the new array shapes, fsyncs every staged file of every array in one
parallel pass and renames them into place (each file replaced atomically), then makes
the new row counts the committed ones in the root group attributes (the commit point;
``vlmfast.store.commit``). A crash at any moment leaves the last commit intact;
re-opening with ``mode="a"`` continues from it.

The class is assembled from its halves: :class:`~vlmfast.store.writing.StoreWriter`
(append, commit) and :class:`~vlmfast.store.reading.StoreReader` (read, index, labels,
boxes, batches); creating and opening live here.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from vlmfast.errors import InputError, StoreError
from vlmfast.store.arrays import open_arrays
from vlmfast.store.attrs import new_attrs, read_attrs
from vlmfast.store.create import check_create_args, write_new_store
from vlmfast.store.reading import StoreReader
from vlmfast.store.schema import ATTR_DTYPE, DEFAULT_IMAGE_BASIS
from vlmfast.store.writing import StoreWriter

__all__ = ["ActivationStore", "read_attrs"]

_LOCK_FILE = ".vlmfast.lock"


class ActivationStore(StoreWriter, StoreReader):
    """A store of activation rows per hook, with per-row index and concept labels.

    Make one with :meth:`create`, open one with :meth:`open`.
    """

    def __init__(self, path: Path, attrs: dict[str, Any], writable: bool) -> None:
        self._path = path
        self._attrs = attrs
        self._writable = writable
        self._arrays = {}
        self._lock_fd = None
        self._pending = False
        self._crash_hook = None
        if writable:
            self._lock()
        if attrs.get(ATTR_DTYPE) == "bfloat16":
            # so that zarr-python in this process reads the store's bf16 arrays too
            from vlmfast.store.zarr_bfloat16 import register

            register()
        self._arrays = open_arrays(str(path), attrs, writable)

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        hooks: Mapping[str, int],
        *,
        dtype: str | torch.dtype = "float32",
        chunk_rows: int = 8192,
        compression: str = "none",
        compression_level: int = 3,
        shard_inner_rows: int | None = None,
        model: Mapping[str, Any] | None = None,
        dataset: Mapping[str, Any] | None = None,
        positions: str | None = None,
        concepts: tuple[list[str], list[str]] | None = None,
        attrs: Mapping[str, Any] | None = None,
        overwrite: bool = False,
        image_basis: str = DEFAULT_IMAGE_BASIS,
        towers: Mapping[str, Any] | None = None,
        boxes: Mapping[str, Any] | None = None,
    ) -> ActivationStore:
        """Creates an empty store at ``path`` and opens it for appending.

        ``hooks`` maps each hook name to its row width. ``model`` / ``dataset``
        (e.g. ``{"spec": ..., "weights_hash": ...}``, ``{"spec": ..., "hash": ...}``)
        are provenance recorded in the attributes. ``concepts`` = (names, kinds)
        adds ``labels/`` (image labels, and caption labels over the same columns;
        ``image_basis`` records where the image labels come from). ``towers`` records
        the geometry of the model's towers (``{"image": {"cls_token": bool, "image_size":
        S, "patch_size": P}}``: which token rows are patches). ``boxes`` (with
        ``concepts``; attrs of ``vlmfast.caching.boxes.box_attrs``) adds the object box
        arrays (``labels/box_*``). ``chunk_rows`` rows form a chunk (a shard when
        ``shard_inner_rows`` is set). The store appears atomically: it is built
        in a sibling folder and renamed into place.

        Returns:
            The new store, open for appending (holding the writer lock).

        Raises:
            InputError: a bad hook name or width, dtype, ``chunk_rows`` or ``concepts``.
            StoreError: ``path`` exists and ``overwrite`` is False (or is not a store).
        """
        target = Path(path)
        name = check_create_args(target, hooks, dtype, chunk_rows, concepts, overwrite)
        meta = new_attrs(
            hooks,
            name,
            chunk_rows=chunk_rows,
            compression=compression,
            shard_inner_rows=shard_inner_rows,
            model=model,
            dataset=dataset,
            positions=positions,
            concepts=concepts,
            attrs=attrs,
            image_basis=image_basis,
            towers=towers,
            boxes=boxes,
        )
        write_new_store(target, hooks, meta, compression_level)
        return cls(target, meta, writable=True)

    @classmethod
    def open(cls, path: str | os.PathLike[str], mode: str = "r") -> ActivationStore:
        """Returns the store at ``path``, opened with ``mode="r"`` to read or ``"a"`` to
        append (one writer at a time).

        Raises:
            InputError: ``mode`` is neither ``"r"`` nor ``"a"``.
            StoreError: ``path`` does not exist, or (``"a"``) another process holds its
                writer lock.
            StoreFormatError: ``path`` is not a vlmfast store, or of an unsupported version.
        """
        if mode not in ("r", "a"):
            raise InputError(f"mode must be 'r' or 'a', got {mode!r}")
        return cls(Path(path), read_attrs(path), writable=mode == "a")

    def _lock(self) -> None:
        fd = os.open(self._path / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            raise StoreError(f"{self._path} is open for writing by another process") from err
        self._lock_fd = fd

    def close(self) -> None:
        """Releases the writer lock. Rows appended since the last commit are discarded."""
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None
        self._writable = False

    def __enter__(self) -> ActivationStore:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None and self._writable and self._pending:
            self.commit()
        self.close()
