"""The writing half of ``ActivationStore``: rows (with their index, labels and boxes)
validated and appended, then committed by the one commit protocol (``store.commit``).

Complete chunks are encoded and written to temp files as rows arrive; :meth:`commit`
writes the partial last chunks and the new array shapes and makes them the committed
ones. Rows appended but not committed do not exist for readers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from vlmfast import _native
from vlmfast.errors import InputError, ShapeError
from vlmfast.store.box_arrays import check_box_rows
from vlmfast.store.commit import commit_rows
from vlmfast.store.convert import as_bytes, to_carrier
from vlmfast.store.records import BoxRows
from vlmfast.store.schema import (
    ATTR_BOXES,
    ATTR_CONCEPTS,
    ATTR_DTYPE,
    ATTR_HOOKS,
    ATTR_SKIPPED_NONFINITE,
    BOX_ARRAYS,
    CONCEPT_CAPTION_LABELS,
    CONCEPT_NAMES,
    HOOK_MODALITY,
    HOOK_WIDTH,
    INDEX_FIELDS,
    INDEX_MODALITY,
    INDEX_POSITION,
    INDEX_SAMPLE,
    LABELS_ARRAY,
    LABELS_CAPTION_ARRAY,
    LABELS_SAMPLE_ARRAY,
    MODALITY_CODES,
    acts_array,
    index_array,
)
from vlmfast.store.state import StoreState

_MAX_NAMED_ROWS = 10

IndexArg = Mapping[str, Any] | None
LabelRows = tuple[np.ndarray, np.ndarray, np.ndarray | None]


class StoreWriter(StoreState):
    """``append``, ``append_many`` and ``commit`` of ``ActivationStore``."""

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
            if not self._attrs.get(ATTR_BOXES):
                raise InputError("boxes given but the store was created without boxes")
            box_rows = check_box_rows(boxes, len(self._attrs[ATTR_CONCEPTS][CONCEPT_NAMES]))
        self._write(prepared, label_rows, box_rows)
        if commit:
            self.commit()
        return {hook: int(p[0].shape[0]) for hook, p in prepared.items()}

    def _write(
        self,
        prepared: dict[str, tuple[np.ndarray, dict[str, np.ndarray], int]],
        label_rows: LabelRows | None,
        box_rows: list[np.ndarray] | None,
    ) -> None:
        """Appends validated rows to the arrays (not yet committed)."""
        for hook, (arr, idx, skipped) in prepared.items():
            self._arrays[acts_array(hook)].append(as_bytes(arr))
            for field, col in idx.items():
                self._arrays[index_array(hook, field)].append(as_bytes(col))
            self._attrs[ATTR_SKIPPED_NONFINITE][hook] += skipped
        if label_rows is not None:
            self._arrays[LABELS_ARRAY].append(as_bytes(label_rows[0]))
            self._arrays[LABELS_SAMPLE_ARRAY].append(as_bytes(label_rows[1]))
            if label_rows[2] is not None:
                self._arrays[LABELS_CAPTION_ARRAY].append(as_bytes(label_rows[2]))
        for name, col in zip(BOX_ARRAYS, box_rows or ()):
            self._arrays[name].append(as_bytes(col))
        self._pending = True

    def commit(self, progress: Mapping[str, Any] | None = None) -> None:
        """Makes every appended row durable and visible; records ``progress`` in the attrs.

        Order: every array's chunk data and new shape on disk (one parallel
        fsync pass over all arrays) -> root attributes with the new counts
        (atomic rename: the commit point). A crash before the commit point
        leaves shapes ahead of the committed counts, which :meth:`open` ignores
        and ``mode="a"`` truncates back (``vlmfast.store.commit``).
        """
        self._need_writable()
        rows = {name: int(a.written) for name, a in self._arrays.items()}
        self._attrs = commit_rows(
            self._path,
            self._arrays,
            rows,
            self._attrs,
            progress=progress,
            crash_hook=self._crash_hook,
        )
        self._pending = False

    def _prepare(
        self, hook: str, data: Any, index: IndexArg, skip_nonfinite: bool
    ) -> tuple[np.ndarray, dict[str, np.ndarray], int]:
        spec = self._hook(hook)
        dtype = self._attrs[ATTR_DTYPE]
        arr = to_carrier(data, dtype, f"activations for {hook}")
        if arr.ndim != 2 or arr.shape[1] != spec[HOOK_WIDTH]:
            raise ShapeError(
                f"activations for {hook} have shape {tuple(arr.shape)}; "
                f"expected [rows, {spec[HOOK_WIDTH]}]"
            )
        n = arr.shape[0]
        idx = self._prepare_index(hook, n, index)
        bad = _native.store_nonfinite_rows(as_bytes(arr), dtype, spec[HOOK_WIDTH])
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
        modality = self._attrs[ATTR_HOOKS][hook][HOOK_MODALITY]
        given = dict(index or {})
        unknown = set(given) - set(INDEX_FIELDS)
        if unknown:
            raise InputError(
                f"index for {hook}: unknown fields {sorted(unknown)} (sample, position, modality)"
            )
        out: dict[str, np.ndarray] = {}
        for field, fdtype in INDEX_FIELDS.items():
            if field in given:
                out[field] = _index_column(hook, field, fdtype, given[field], n)
            elif field == INDEX_SAMPLE:
                start = self._arrays[acts_array(hook)].written
                out[field] = np.arange(start, start + n, dtype=np.int64)
            elif field == INDEX_POSITION:
                out[field] = np.full(n, -1, dtype=np.int32)
            else:
                if modality == "joint":
                    raise InputError(
                        f"index for {hook}: a joint hook needs index['modality'] (0 image, 1 text)"
                    )
                out[field] = np.full(n, MODALITY_CODES[modality], dtype=np.uint8)
        if out[INDEX_MODALITY].size and int(out[INDEX_MODALITY].max()) > 1:
            raise InputError(f"index modality for {hook} must be 0 (image) or 1 (text)")
        return out

    def _prepare_labels(
        self, labels: Any, label_samples: Any, caption_labels: Any = None
    ) -> LabelRows | None:
        if labels is None:
            if caption_labels is not None:
                raise InputError("caption_labels given without labels (the image labels)")
            return None
        concepts = self._attrs.get(ATTR_CONCEPTS)
        if concepts is None:
            raise InputError("labels given but the store was created without concepts")
        c = max(len(concepts[CONCEPT_NAMES]), 1)
        mat = _label_matrix(labels, "labels", c)
        cap: np.ndarray | None = None
        if concepts.get(CONCEPT_CAPTION_LABELS):
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


def _index_column(hook: str, field: str, fdtype: str, value: Any, n: int) -> np.ndarray:
    """A given index column, checked and cast to the field's dtype."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    col = np.asarray(value)
    if col.ndim == 0:
        col = np.full(n, col)
    if col.shape != (n,):
        raise ShapeError(f"index {field} for {hook} has shape {col.shape}; expected ({n},)")
    if not np.issubdtype(col.dtype, np.integer):
        raise InputError(f"index {field} for {hook} must hold integers, got {col.dtype}")
    return np.ascontiguousarray(col.astype(fdtype))


def _label_matrix(labels: Any, what: str, c: int) -> np.ndarray:
    mat = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if mat.ndim != 2 or mat.shape[1] != c or mat.dtype != np.bool_:
        raise ShapeError(
            f"{what} have shape {mat.shape} dtype {mat.dtype}; expected bool [samples, {c}]"
        )
    return mat
