"""Patch-level ground truth from a store's object boxes (``tokens="patch"`` scoring).

Patch rule (as saev / NetDissect score a feature as a detector): a patch is positive
for a concept when it holds the centre of the box of an object with that concept, or
that box covers at least a quarter of the patch. The patch grid is the store's
``towers.image`` record; the boxes are ``ActivationStore.boxes``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from vlmfast.store.records import BoxRows
from vlmfast.store.schema import TOWER_CLS_TOKEN, TOWER_IMAGE_SIZE, TOWER_PATCH_SIZE

COVER_FRACTION = 0.25
"""A box covering at least this fraction of a patch makes the patch positive."""
_EPS = 1e-6  # relative slack on the quarter (pixel edges normalised to float32)
_CHUNK = 8192  # boxes per pass: [chunk, side, side] float64 cover (48 MB at 27 x 27)


@dataclass(frozen=True)
class PatchGrid:
    """The patch grid of an image tower."""

    image_size: int
    patch_size: int
    class_token: bool

    @property
    def side(self) -> int:
        """Patches per side (the remainder pixels are dropped, like the patch conv)."""
        return self.image_size // self.patch_size

    @property
    def n_patches(self) -> int:
        return self.side * self.side

    @classmethod
    def from_tower(cls, image: Mapping[str, Any]) -> PatchGrid:
        """Returns the grid of a store's ``towers.image`` record (``cls_token``,
        ``image_size``, ``patch_size``)."""
        return cls(
            int(image[TOWER_IMAGE_SIZE]), int(image[TOWER_PATCH_SIZE]), bool(image[TOWER_CLS_TOKEN])
        )


def patch_hits(boxes: np.ndarray, grid: PatchGrid) -> tuple[np.ndarray, np.ndarray]:
    """``(box index, patch index)`` of every (box, patch) pair the rule makes positive:
    the patch holds the box centre or the box covers >= a quarter of it. Patch index
    ``row * side + col`` (row-major, as the tower flattens patches)."""
    g = grid.side
    ps = grid.patch_size / grid.image_size  # patch side in normalised units
    edges = np.arange(g + 1, dtype=np.float64) * ps
    out_b: list[np.ndarray] = []
    out_p: list[np.ndarray] = []
    b_all = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    for lo in range(0, len(b_all), _CHUNK):
        b = b_all[lo : lo + _CHUNK]
        ox = np.clip(
            np.minimum(b[:, 2:3], edges[None, 1:]) - np.maximum(b[:, 0:1], edges[None, :-1]),
            0,
            None,
        )  # [n, g] overlap along x per column
        oy = np.clip(
            np.minimum(b[:, 3:4], edges[None, 1:]) - np.maximum(b[:, 1:2], edges[None, :-1]),
            0,
            None,
        )
        cover = oy[:, :, None] * ox[:, None, :]  # [n, row, col]
        hit = cover >= COVER_FRACTION * ps * ps * (1 - _EPS)
        cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
        col, row = np.floor(cx / ps).astype(np.int64), np.floor(cy / ps).astype(np.int64)
        inside = (col >= 0) & (col < g) & (row >= 0) & (row < g)
        k = np.flatnonzero(inside)
        hit[k, row[k], col[k]] = True
        bi, ri, ci = np.nonzero(hit)
        out_b.append(bi + lo)
        out_p.append(ri * g + ci)
    if not out_b:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(out_b).astype(np.int64), np.concatenate(out_p).astype(np.int64)


def patch_labels(
    sample: npt.NDArray[np.int64],
    position: npt.NDArray[Any],
    boxes: BoxRows,
    grid: PatchGrid,
) -> tuple[np.ndarray, np.ndarray]:
    """Returns the labels of image token rows by the patch each shows: ``(labels, keep)``.

    ``sample`` / ``position``: the rows' sample ids and token positions. Token ``p``
    shows patch ``p - 1`` when the tower has a CLS token at 0 (CLS rows and pooled rows
    are not patches: ``keep`` is False for them), else patch ``p``. ``labels``: bool
    ``[keep.sum(), C]``, each kept row's patch labels (all False where no box hits).
    """
    sample = np.asarray(sample, dtype=np.int64)
    patch = np.asarray(position, dtype=np.int64) - (1 if grid.class_token else 0)
    n_p = grid.n_patches
    keep = (patch >= 0) & (patch < n_p)
    c = boxes.concepts.shape[1]
    out = np.zeros((int(keep.sum()), c), dtype=bool)
    bi, pi = patch_hits(boxes.boxes, grid)
    if len(bi) == 0 or len(out) == 0:
        return out, keep
    keys, inv = np.unique(np.asarray(boxes.sample, np.int64)[bi] * n_p + pi, return_inverse=True)
    order = np.argsort(inv, kind="stable")
    vals = np.asarray(boxes.concepts, dtype=bool)[bi[order]]
    starts = np.flatnonzero(np.r_[True, np.diff(inv[order]) != 0])
    per_key = np.logical_or.reduceat(vals, starts, axis=0)
    row_key = sample[keep] * n_p + patch[keep]
    at = np.minimum(np.searchsorted(keys, row_key), len(keys) - 1)
    found = keys[at] == row_key
    out[found] = per_key[at[found]]
    return out, keep


def patch_labels_reference(
    sample: npt.NDArray[np.int64],
    position: npt.NDArray[Any],
    boxes: BoxRows,
    grid: PatchGrid,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`patch_labels` by loops over rows and boxes (the reference it is tested on)."""
    ps = grid.patch_size / grid.image_size
    off = 1 if grid.class_token else 0
    keep = np.zeros(len(sample), dtype=bool)
    rows: list[np.ndarray] = []
    for s, p in zip(np.asarray(sample).tolist(), np.asarray(position).tolist()):
        k = p - off
        if not 0 <= k < grid.n_patches:
            continue
        r, col = divmod(k, grid.side)
        px0, py0, px1, py1 = col * ps, r * ps, (col + 1) * ps, (r + 1) * ps
        lab = np.zeros(boxes.concepts.shape[1], dtype=bool)
        for b in np.flatnonzero(np.asarray(boxes.sample) == s):
            x0, y0, x1, y1 = (float(v) for v in boxes.boxes[b])
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            centre = px0 <= cx < px1 and py0 <= cy < py1
            area = max(0.0, min(x1, px1) - max(x0, px0)) * max(0.0, min(y1, py1) - max(y0, py0))
            if centre or area >= COVER_FRACTION * ps * ps * (1 - _EPS):
                lab |= boxes.concepts[b]
        rows.append(lab)
    keep[:] = [0 <= p - off < grid.n_patches for p in np.asarray(position).tolist()]
    c = boxes.concepts.shape[1]
    return (np.stack(rows) if rows else np.zeros((0, c), dtype=bool)), keep
