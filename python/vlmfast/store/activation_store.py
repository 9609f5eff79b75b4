"""``ActivationStore``: a crash-safe zarr v3 store of activation rows (Rust I/O).

Writes go through the native core (``vlmfast._native``): complete chunks are
encoded and written to temp files as rows arrive; ``commit`` writes the partial last chunks and the new array
shapes, fsyncs every staged file of every array in one parallel pass and
renames them into place (each file replaced atomically), then makes the new row
counts the committed ones in the root group attributes (the commit point). A crash at any moment leaves the last commit intact;
re-opening with ``mode="a"`` continues from it.
"""

from __future__ import annotations

import copy
import fcntl
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlmfast import _native
from vlmfast.errors import HookNameError, InputError, ShapeError, StoreError, StoreFormatError
from vlmfast.store._convert import ACT_DTYPES, as_bytes, dtype_name, to_carrier, to_torch
from vlmfast.store.boxes import (
    BOX_ARRAYS,
    BOX_SAMPLE_ARRAY,
    BoxRows,
    check_box_rows,
    create_box_arrays,
    read_boxes,
)
from vlmfast.store.layout import (
    FORMAT_VERSION,
    INDEX_FIELDS,
    LABELS_ARRAY,
    LABELS_CAPTION_ARRAY,
    LABELS_DIMS,
    LABELS_SAMPLE_ARRAY,
    MODALITIES,
    MODALITY_CODES,
    Labels,
    StoreIndex,
    acts_array,
    acts_dims,
    hook_modality,
    index_array,
    index_dims,
)

_LOCK_FILE = ".vlmfast.lock"
_MAX_NAMED_ROWS = 10

IndexArg = Mapping[str, Any] | None


def _is_store(path: Path) -> bool:
    return (path / "zarr.json").is_file()


class ActivationStore:
    """A store of activation rows per hook, with per-row index and concept labels.

    Make one with :meth:`create`, open one with :meth:`open`.
    """

    def __init__(self, path: Path, attrs: dict[str, Any], writable: bool) -> None:
        self._path = path
        self._attrs = attrs
        self._writable = writable
        self._arrays: dict[str, Any] = {}
        self._lock_fd: int | None = None
        self._pending = False
        self._crash_hook: Callable[[str], None] | None = None  # tests: crash at a commit stage
        if writable:
            self._lock()
        if attrs.get("dtype") == "bfloat16":
            # so that zarr-python in this process reads the store's bf16 arrays too
            from vlmfast.store.zarr_bfloat16 import register

            register()
        committed = attrs["committed_rows"]
        for hook in attrs["hooks"]:
            n = int(committed[hook])
            for name in (acts_array(hook), *(index_array(hook, f) for f in INDEX_FIELDS)):
                self._arrays[name] = _native.store_open_array(str(path), name, n, writable)
        if attrs.get("concepts") is not None:
            n = int(attrs["committed_label_rows"])
            for name in label_arrays(attrs):
                self._arrays[name] = _native.store_open_array(str(path), name, n, writable)
        if attrs.get("boxes"):
            n = int(attrs.get("committed_box_rows", 0))
            for name in BOX_ARRAYS:
                self._arrays[name] = _native.store_open_array(str(path), name, n, writable)

    # ------------------------------------------------------------------ create / open

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
        image_basis: str = "caption",
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
        ``concepts``; attrs of ``vlmfast.store.boxes.box_attrs``) adds the object box
        arrays (``labels/box_*``). ``chunk_rows`` rows form a chunk (a shard when
        ``shard_inner_rows`` is set). The store appears atomically: it is built
        in a sibling folder and renamed into place.
        """
        target = Path(path)
        name = _check_create_args(target, hooks, dtype, chunk_rows, concepts, overwrite)
        tmp = target.with_name(f".{target.name}.creating-{os.getpid()}")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        root = str(tmp)
        meta: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "writer": "vlmfast",
            "model": dict(model or {}),
            "dataset": dict(dataset or {}),
            "hooks": {h: {"width": int(w), "modality": hook_modality(h)} for h, w in hooks.items()},
            "dtype": name,
            "positions": positions,
            "chunk_rows": int(chunk_rows),
            "compression": compression,
            "shard_inner_rows": shard_inner_rows,
            "concepts": (
                None
                if concepts is None
                else {
                    "names": list(concepts[0]),
                    "kinds": list(concepts[1]),
                    "caption_labels": True,
                    "image_basis": image_basis,
                }
            ),
            "committed_rows": {h: 0 for h in hooks},
            "committed_label_rows": 0,
            "skipped_nonfinite": {h: 0 for h in hooks},
            "progress": {},
            "towers": dict(towers or {}),
            **({"boxes": dict(boxes), "committed_box_rows": 0} if boxes else {}),
            "user": dict(attrs or {}),
        }
        try:
            _create_arrays(
                root,
                hooks,
                name,
                chunk_rows,
                compression,
                compression_level,
                shard_inner_rows,
                concepts,
            )
            if boxes:
                if concepts is None:
                    raise InputError("boxes need concepts (the columns of their labels)")
                create_box_arrays(_native, root, int(chunk_rows), compression, len(concepts[0]))
            _native.store_write_group(root, "/", json.dumps(meta))
            if target.exists():
                shutil.rmtree(target)
            tmp.rename(target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return cls(target, meta, writable=True)

    @classmethod
    def open(cls, path: str | os.PathLike[str], mode: str = "r") -> ActivationStore:
        """Opens a store: ``mode="r"`` to read, ``"a"`` to append (one writer at a time)."""
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

    # ------------------------------------------------------------------ properties

    @property
    def path(self) -> Path:
        """Folder of the store."""
        return self._path

    @property
    def hooks(self) -> list[str]:
        """Hook names held by the store."""
        return list(self._attrs["hooks"])

    @property
    def dtype(self) -> torch.dtype:
        """torch dtype of the activation rows."""
        from vlmfast.store._convert import TORCH_DTYPE

        return TORCH_DTYPE[self._attrs["dtype"]]

    @property
    def attrs(self) -> dict[str, Any]:
        """A copy of the root group attributes (provenance, committed counts, progress)."""
        return copy.deepcopy(self._attrs)

    def width(self, hook: str) -> int:
        """Row width of a hook."""
        return int(self._hook(hook)["width"])

    def n_rows(self, hook: str) -> int:
        """Committed rows of a hook."""
        self._hook(hook)
        return int(self._attrs["committed_rows"][hook])

    def _hook(self, hook: str) -> dict[str, Any]:
        spec = self._attrs["hooks"].get(hook)
        if spec is None:
            raise HookNameError(f"hook {hook!r} is not in the store; it holds {self.hooks}")
        return spec

    def _need_writable(self) -> None:
        if not self._writable:
            raise StoreError(f"{self._path} is open read-only; open it with mode='a' to append")

    # ------------------------------------------------------------------ writing

    def _prepare(
        self, hook: str, data: Any, index: IndexArg, skip_nonfinite: bool
    ) -> tuple[np.ndarray, dict[str, np.ndarray], int]:
        spec = self._hook(hook)
        arr = to_carrier(data, self._attrs["dtype"], f"activations for {hook}")
        if arr.ndim != 2 or arr.shape[1] != spec["width"]:
            raise ShapeError(
                f"activations for {hook} have shape {tuple(arr.shape)}; expected [rows, {spec['width']}]"
            )
        n = arr.shape[0]
        idx = self._prepare_index(hook, n, index)
        bad = _native.store_nonfinite_rows(as_bytes(arr), self._attrs["dtype"], spec["width"])
        skipped = 0
        if bad:
            if not skip_nonfinite:
                shown = ", ".join(str(r) for r in bad[:_MAX_NAMED_ROWS])
                more = (
                    f" and {len(bad) - _MAX_NAMED_ROWS} more" if len(bad) > _MAX_NAMED_ROWS else ""
                )
                raise InputError(
                    f"activations for {hook}: rows {shown}{more} hold NaN or Inf "
                    "(pass skip_nonfinite=True to skip them)"
                )
            keep = np.ones(n, dtype=bool)
            keep[np.asarray(bad, dtype=np.int64)] = False
            arr = np.ascontiguousarray(arr[keep])
            idx = {k: np.ascontiguousarray(v[keep]) for k, v in idx.items()}
            skipped = len(bad)
        return arr, idx, skipped

    def _prepare_index(self, hook: str, n: int, index: IndexArg) -> dict[str, np.ndarray]:
        modality = self._attrs["hooks"][hook]["modality"]
        given = dict(index or {})
        unknown = set(given) - set(INDEX_FIELDS)
        if unknown:
            raise InputError(
                f"index for {hook}: unknown fields {sorted(unknown)} (sample, position, modality)"
            )
        out: dict[str, np.ndarray] = {}
        for field, fdtype in INDEX_FIELDS.items():
            if field in given:
                value = given[field]
                if isinstance(value, torch.Tensor):
                    value = value.detach().cpu().numpy()
                col = np.asarray(value)
                if col.ndim == 0:
                    col = np.full(n, col)
                if col.shape != (n,):
                    raise ShapeError(
                        f"index {field} for {hook} has shape {col.shape}; expected ({n},)"
                    )
                if not np.issubdtype(col.dtype, np.integer):
                    raise InputError(
                        f"index {field} for {hook} must hold integers, got {col.dtype}"
                    )
                out[field] = np.ascontiguousarray(col.astype(fdtype))
            elif field == "sample":
                start = self._arrays[acts_array(hook)].written
                out[field] = np.arange(start, start + n, dtype=np.int64)
            elif field == "position":
                out[field] = np.full(n, -1, dtype=np.int32)
            else:
                if modality == "joint":
                    raise InputError(
                        f"index for {hook}: a joint hook needs index['modality'] (0 image, 1 text)"
                    )
                out[field] = np.full(n, MODALITY_CODES[modality], dtype=np.uint8)
        if out["modality"].size and int(out["modality"].max()) > 1:
            raise InputError(f"index modality for {hook} must be 0 (image) or 1 (text)")
        return out

    def append(
        self,
        hook: str,
        data: Any,
        index: IndexArg = None,
        *,
        skip_nonfinite: bool = False,
        commit: bool = True,
    ) -> int:
        """Appends rows ``[n, width]`` to ``hook``; returns the rows written.

        ``index`` optionally gives per-row ``sample`` / ``position`` / ``modality``
        (defaults: running row id, -1, the hook's tower). With ``commit`` the rows
        are durable when this returns; otherwise call :meth:`commit` later.
        """
        return self.append_many(
            {hook: data},
            {hook: index} if index else None,
            skip_nonfinite=skip_nonfinite,
            commit=commit,
        )[hook]

    def append_many(
        self,
        data: Mapping[str, Any],
        index: Mapping[str, Any] | None = None,
        *,
        labels: Any = None,
        label_samples: Any = None,
        caption_labels: Any = None,
        boxes: BoxRows | None = None,
        skip_nonfinite: bool = False,
        commit: bool = True,
    ) -> dict[str, int]:
        """Appends rows to several hooks at once (all validated before any is written).

        ``index`` is either one index for every hook (``{"sample": ..., ...}``) or
        one per hook (``{hook: {"sample": ...}}``). ``labels`` (bool ``[samples, C]``)
        with ``label_samples`` (their sample ids) appends concept-label rows: what each
        image shows; ``caption_labels`` (same shape) what each caption says (default: the
        same as ``labels``, for data whose only labels come from the captions).
        """
        self._need_writable()
        shared = index is not None and set(index) <= set(INDEX_FIELDS)
        prepared: dict[str, tuple[np.ndarray, dict[str, np.ndarray], int]] = {}
        for hook, rows in data.items():
            hook_index = index if shared else (index or {}).get(hook)
            prepared[hook] = self._prepare(hook, rows, hook_index, skip_nonfinite)
        if index is not None and not shared:
            extra = set(index) - set(data)
            if extra:
                raise InputError(f"index names hooks with no data: {sorted(extra)}")
        label_rows = self._prepare_labels(labels, label_samples, caption_labels)
        box_rows = None
        if boxes is not None:
            if not self._attrs.get("boxes"):
                raise InputError("boxes given but the store was created without boxes")
            box_rows = check_box_rows(boxes, len(self._attrs["concepts"]["names"]))
        for hook, (arr, idx, skipped) in prepared.items():
            self._arrays[acts_array(hook)].append(as_bytes(arr))
            for field, col in idx.items():
                self._arrays[index_array(hook, field)].append(as_bytes(col))
            self._attrs["skipped_nonfinite"][hook] += skipped
        if label_rows is not None:
            self._arrays[LABELS_ARRAY].append(as_bytes(label_rows[0]))
            self._arrays[LABELS_SAMPLE_ARRAY].append(as_bytes(label_rows[1]))
            if label_rows[2] is not None:
                self._arrays[LABELS_CAPTION_ARRAY].append(as_bytes(label_rows[2]))
        for name, col in zip(BOX_ARRAYS, box_rows or ()):
            self._arrays[name].append(as_bytes(col))
        self._pending = True
        if commit:
            self.commit()
        return {hook: int(p[0].shape[0]) for hook, p in prepared.items()}

    def _prepare_labels(
        self, labels: Any, label_samples: Any, caption_labels: Any = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None] | None:
        if labels is None:
            if caption_labels is not None:
                raise InputError("caption_labels given without labels (the image labels)")
            return None
        concepts = self._attrs.get("concepts")
        if concepts is None:
            raise InputError("labels given but the store was created without concepts")
        c = max(len(concepts["names"]), 1)
        mat = _label_matrix(labels, "labels", c)
        cap: np.ndarray | None = None
        if concepts.get("caption_labels"):
            # without caption labels the captions are taken to say what the images show
            # (all a caption-only labeler knows); pass them whenever they differ
            cap = (
                mat
                if caption_labels is None
                else _label_matrix(caption_labels, "caption_labels", c)
            )
            if cap.shape != mat.shape:
                raise ShapeError(
                    f"caption_labels have shape {cap.shape} but labels have {mat.shape}"
                )
        elif caption_labels is not None:
            raise InputError("caption_labels given but this store has no labels/caption")
        if label_samples is None:
            raise InputError("labels need label_samples (the sample id of each label row)")
        ids = np.asarray(label_samples)
        if ids.shape != (mat.shape[0],) or not np.issubdtype(ids.dtype, np.integer):
            raise ShapeError(
                f"label_samples has shape {ids.shape}; expected ({mat.shape[0]},) integers"
            )
        return (
            np.ascontiguousarray(mat),
            np.ascontiguousarray(ids.astype(np.int64)),
            None if cap is None else np.ascontiguousarray(cap),
        )

    def commit(self, progress: Mapping[str, Any] | None = None) -> None:
        """Makes every appended row durable and visible; records ``progress`` in the attrs.

        Order: every array's chunk data and new shape on disk (one parallel
        fsync pass over all arrays) -> root attributes with the new counts
        (atomic rename: the commit point). A crash before the commit point
        leaves shapes ahead of the committed counts, which :meth:`open` ignores
        and ``mode="a"`` truncates back.
        """
        self._need_writable()
        arrays = list(self._arrays.values())
        rows = [int(a.written) for a in arrays]
        _native.store_prepare_commit(arrays, rows)
        if self._crash_hook is not None:
            self._crash_hook("flushed")
        attrs = copy.deepcopy(self._attrs)
        for hook in attrs["hooks"]:
            attrs["committed_rows"][hook] = int(self._arrays[acts_array(hook)].written)
        if LABELS_ARRAY in self._arrays:
            attrs["committed_label_rows"] = int(self._arrays[LABELS_ARRAY].written)
        if BOX_SAMPLE_ARRAY in self._arrays:
            attrs["committed_box_rows"] = int(self._arrays[BOX_SAMPLE_ARRAY].written)
        if progress is not None:
            attrs["progress"] = dict(progress)
        _native.store_write_group(str(self._path), "/", json.dumps(attrs))
        self._attrs = attrs
        if self._crash_hook is not None:
            self._crash_hook("attrs_written")
        _native.store_mark_committed(arrays, rows)
        self._pending = False

    # ------------------------------------------------------------------ reading

    def read_raw(
        self, name: str, carrier: np.dtype[Any], width: int | None, start: int, stop: int
    ) -> np.ndarray:
        """Rows ``[start, stop)`` of the store's array ``name`` (e.g.
        ``acts/<hook>``, ``index/<hook>/sample``, ``labels/concepts``) as a numpy
        array of ``carrier`` (bf16 as uint16): the layer under :meth:`read`,
        :meth:`index` and :attr:`labels`, for copying arrays between stores.
        The rows must be committed."""
        shape = (stop - start,) if width is None else (stop - start, width)
        out = np.empty(shape, dtype=carrier)
        self._arrays[name].read_into(start, stop, as_bytes(out) if out.size else out.view(np.uint8))
        return out

    def _range(self, hook: str, start: int, stop: int | None) -> tuple[int, int]:
        n = self.n_rows(hook)
        stop = n if stop is None else stop
        if not 0 <= start <= stop <= n:
            raise InputError(f"rows {start}:{stop} of {hook} out of range (0:{n} committed)")
        return start, stop

    def read(self, hook: str, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Committed rows ``[start, stop)`` of ``hook`` as a CPU tensor of the store dtype."""
        from vlmfast.store._convert import NUMPY_CARRIER

        start, stop = self._range(hook, start, stop)
        name = self._attrs["dtype"]
        arr = self.read_raw(acts_array(hook), NUMPY_CARRIER[name], self.width(hook), start, stop)
        return to_torch(arr, name)

    def index(self, hook: str, start: int = 0, stop: int | None = None) -> StoreIndex:
        """Sample id, position and modality of the committed rows of ``hook``."""
        start, stop = self._range(hook, start, stop)
        cols = {
            f: self.read_raw(index_array(hook, f), np.dtype(t), None, start, stop)
            for f, t in INDEX_FIELDS.items()
        }
        return StoreIndex(**cols)

    @property
    def boxes(self) -> BoxRows | None:
        """The committed object boxes (model-input frame), or None when the store has none
        (see ``vlmfast.store.boxes``)."""
        return read_boxes(self)

    @property
    def labels(self) -> Labels | None:
        """Concept labels of the cached samples, or None when the store has none."""
        concepts = self._attrs.get("concepts")
        if concepts is None:
            return None
        n = int(self._attrs["committed_label_rows"])
        c = max(len(concepts["names"]), 1)
        mat = self.read_raw(LABELS_ARRAY, np.dtype(np.bool_), c, 0, n)
        ids = self.read_raw(LABELS_SAMPLE_ARRAY, np.dtype(np.int64), None, 0, n)
        c_real = len(concepts["names"])
        caption = None
        if concepts.get("caption_labels"):
            caption = self.read_raw(LABELS_CAPTION_ARRAY, np.dtype(np.bool_), c, 0, n)[:, :c_real]
        return Labels(
            mat[:, :c_real],
            ids,
            list(concepts["names"]),
            list(concepts["kinds"]),
            caption=caption,
            image_basis=str(concepts.get("image_basis", "caption")),
        )

    def batches(
        self,
        hook: str,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        dtype: torch.dtype | None = None,
        device: str | torch.device | None = None,
        *,
        epoch: int = 0,
        start_batch: int = 0,
        drop_last: bool = False,
        buffer_rows: int = 65536,
        prefetch: int = 2,
    ) -> Iterator[torch.Tensor]:
        """Batches of ``hook``'s committed rows as tensors ``[batch_size, width]``.

        With ``shuffle`` the order is: chunks permuted per ``(seed, epoch)``,
        rows shuffled within windows of ``buffer_rows`` rows (rounded up to
        whole chunks), read ahead on a background thread (``prefetch`` windows).
        Every row appears once per epoch; ``start_batch`` resumes mid-epoch and
        yields exactly the batches an uninterrupted run would have yielded next.
        """
        from vlmfast.store._convert import NUMPY_CARRIER

        if batch_size <= 0:
            raise InputError(f"batch_size must be > 0, got {batch_size}")
        if seed < 0 or epoch < 0 or start_batch < 0:
            raise InputError("seed, epoch and start_batch must be >= 0")
        width = self.width(hook)
        chunk_rows = int(self._arrays[acts_array(hook)].chunk_rows)
        window_chunks = max(1, -(-max(buffer_rows, batch_size) // chunk_rows))
        stream = _native.ShuffleStream(
            str(self._path),
            acts_array(hook),
            self.n_rows(hook),
            batch_size,
            shuffle,
            seed,
            epoch,
            start_batch,
            window_chunks,
            max(1, prefetch),
            drop_last,
        )
        name = self._attrs["dtype"]
        carrier = NUMPY_CARRIER[name]
        target = torch.device(device) if device is not None else None
        pin = target is not None and target.type == "cuda"
        return _iterate(stream, width, carrier, name, dtype, target, pin)


def label_arrays(attrs: Mapping[str, Any]) -> list[str]:
    """The label arrays of a store with concepts (rows aligned: one per labelled sample)."""
    names = [LABELS_ARRAY, LABELS_SAMPLE_ARRAY]
    if (attrs.get("concepts") or {}).get("caption_labels"):
        names.append(LABELS_CAPTION_ARRAY)
    return names


def _label_matrix(labels: Any, what: str, c: int) -> np.ndarray:
    mat = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if mat.ndim != 2 or mat.shape[1] != c or mat.dtype != np.bool_:
        raise ShapeError(
            f"{what} have shape {mat.shape} dtype {mat.dtype}; expected bool [samples, {c}]"
        )
    return mat


def _check_create_args(
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
        if not (_is_store(target) or (target.is_dir() and not any(target.iterdir()))):
            raise StoreError(f"{target} exists and is not a vlmfast store; refusing to delete it")
    return name


def _create_arrays(
    root: str,
    hooks: Mapping[str, int],
    dtype: str,
    chunk_rows: int,
    compression: str,
    compression_level: int,
    shard_inner_rows: int | None,
    concepts: tuple[list[str], list[str]] | None,
) -> None:
    """Writes the group nodes and empty arrays of a new store under ``root``."""
    for group in ("/acts", "/index", "/labels"):
        _native.store_write_group(root, group, "{}")
    for hook, width in hooks.items():
        _native.store_write_group(root, f"/index/{hook}", "{}")
        _native.store_create_array(
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
            _native.store_create_array(
                root,
                index_array(hook, field),
                fdtype,
                None,
                int(chunk_rows),
                compression,
                dims=index_dims(hook),
            )
    if concepts is not None:
        width = max(len(concepts[0]), 1)
        for name in (LABELS_ARRAY, LABELS_CAPTION_ARRAY):
            _native.store_create_array(
                root, name, "bool", width, int(chunk_rows), compression, dims=LABELS_DIMS
            )
        _native.store_create_array(
            root,
            LABELS_SAMPLE_ARRAY,
            "int64",
            None,
            int(chunk_rows),
            compression,
            dims=LABELS_DIMS[:1],
        )


_POOL_SIZE = 4


def _free_buffer(pool: list[np.ndarray], rows: int) -> np.ndarray | None:
    """A buffer of ``pool`` with ``rows`` rows that nothing else refers to."""
    for cand in pool:
        # referents: `pool`, `cand` and getrefcount's argument
        if cand.shape[0] == rows and sys.getrefcount(cand) == 3:
            return cand
    return None


def _iterate(
    stream: Any,
    width: int,
    carrier: np.dtype[Any],
    name: str,
    dtype: torch.dtype | None,
    device: torch.device | None,
    pin: bool,
) -> Iterator[torch.Tensor]:
    # Batch buffers are recycled once nothing outside this generator refers to
    # them (the consumer dropped the batch, or it was converted to another
    # dtype/device): fresh pages cost a page fault and a zeroing per 4 KiB.
    pool: list[np.ndarray] = []
    while True:
        n = stream.next_len()
        if n == 0:
            return
        buf = _free_buffer(pool, n)
        if buf is None:
            buf = np.empty((n, width), dtype=carrier)
            if len(pool) < _POOL_SIZE:
                pool.append(buf)
        stream.next_into(as_bytes(buf))
        t = to_torch(buf, name)
        del buf
        if pin:
            t = t.pin_memory()
        if device is not None or dtype is not None:
            t = t.to(device=device, dtype=dtype, non_blocking=pin)
        yield t
        del t


def read_attrs(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The root attributes of the store at ``path``; a clear error when it is not one."""
    p = Path(path)
    if not p.exists():
        raise StoreError(f"{p} does not exist")
    if not _is_store(p):
        raise StoreFormatError(f"{p} is not a vlmfast store (no zarr.json group metadata)")
    try:
        attrs = json.loads(_native.store_read_group_attrs(str(p), "/"))
    except StoreError as err:
        raise StoreFormatError(f"{p} is not a vlmfast store: {err}") from err
    version = attrs.get("format_version")
    if attrs.get("writer") != "vlmfast" or not isinstance(version, int):
        raise StoreFormatError(f"{p} is a zarr group but not a vlmfast activation store")
    if version > FORMAT_VERSION:
        raise StoreFormatError(
            f"{p} has store format version {version}; this vlmfast reads up to "
            f"{FORMAT_VERSION}: upgrade vlmfast"
        )
    for key in ("hooks", "committed_rows", "dtype"):
        if key not in attrs:
            raise StoreFormatError(f"{p}: store attributes lack {key!r}")
    bad = [h for h, s in attrs["hooks"].items() if s.get("modality") not in MODALITIES]
    if bad:
        raise StoreFormatError(f"{p}: hooks {bad} have no valid modality")
    return attrs
