"""Object boxes stored with the labels, and patch-level ground truth from them.

Schema (written only when the source knows where its objects are: synthetic scenes,
COCO instances): ``labels/box_sample`` int64 ``[n_boxes]`` (sample id of each box,
repeated per box, in sample order), ``labels/boxes`` float32 ``[n_boxes, 4]``
(``x0, y0, x1, y1`` normalised to ``[0, 1]`` in the *model-input* frame, i.e. after the
pair's preprocessing), ``labels/box_concepts`` bool ``[n_boxes, C]`` (the object's
concepts, columns of ``labels/concepts``). The root attrs hold ``boxes`` (the
geometry that mapped them, the patch grid of the image tower, the concept kinds boxes
carry) and ``committed_box_rows``, committed with the other arrays.

Patch rule (as saev / NetDissect score a feature as a detector): a patch is positive
for a concept when it holds the centre of the box of an object with that concept, or
that box covers at least a quarter of the patch.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from vlmfast.errors import InputError, ShapeError

BOX_SAMPLE_ARRAY = "labels/box_sample"
BOXES_ARRAY = "labels/boxes"
BOX_CONCEPTS_ARRAY = "labels/box_concepts"
BOX_ARRAYS = (BOX_SAMPLE_ARRAY, BOXES_ARRAY, BOX_CONCEPTS_ARRAY)
"""The box arrays (rows aligned: one per box)."""
BOX_DIMS = ["box.row", "box.coord"]
BOX_CONCEPT_DIMS = ["box.row", "concept"]
COVER_FRACTION = 0.25
"""A box covering at least this fraction of a patch makes the patch positive."""
_EPS = 1e-6  # relative slack on the quarter (pixel edges normalised to float32)
_CHUNK = 8192  # boxes per pass: [chunk, side, side] float64 cover (48 MB at 27 x 27)


@dataclass
class BoxRows:
    """Boxes of stored samples, in the model-input frame."""

    sample: np.ndarray
    """int64 ``[n]``: sample id of each box."""
    boxes: np.ndarray
    """float32 ``[n, 4]``: ``(x0, y0, x1, y1)`` in ``[0, 1]`` of the model input."""
    concepts: np.ndarray
    """bool ``[n, C]``: each box's concepts (columns of the store's labels)."""

    def __len__(self) -> int:
        return len(self.sample)


# ---------------------------------------------------------------- input geometry


@dataclass(frozen=True)
class InputGeometry:
    """How a pair's preprocessing maps an image of ``w x h`` pixels onto its input.

    ``squash``: resize to ``size x size`` (SigLIP, the bundled model: identity at its
    own size). ``shortest_crop``: resize the shortest side to ``resize`` (aspect kept),
    then centre-crop ``size x size`` (open_clip CLIP, HF CLIP). ``rounding`` says how
    the resized sides and the crop offset round, as the transform does it:
    ``torchvision`` (open_clip), ``hf`` (a HF image processor), ``hf_fallback``
    (``hf_processing.fallback_transform``).
    """

    mode: str
    size: int
    resize: int
    rounding: str = "torchvision"

    def resized(
        self, w: npt.NDArray[np.float64], h: npt.NDArray[np.float64]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Sides of the resized image before the crop."""
        if self.mode == "squash":
            return np.full_like(w, self.size), np.full_like(h, self.size)
        short, long = np.minimum(w, h), np.maximum(w, h)
        if self.rounding == "hf_fallback":
            scale = self.resize / short
            return np.maximum(self.resize, np.round(w * scale)), np.maximum(
                self.resize, np.round(h * scale)
            )
        new_long = np.floor(self.resize * long / short)
        wide = w > h
        return np.where(wide, new_long, self.resize), np.where(wide, self.resize, new_long)

    def crop_offset(self, rw: np.ndarray, rh: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Left and top of the crop in the resized image."""
        if self.mode == "squash":
            return np.zeros_like(rw), np.zeros_like(rh)
        if self.rounding == "torchvision":
            return np.round((rw - self.size) / 2.0), np.round((rh - self.size) / 2.0)
        return np.floor((rw - self.size) / 2), np.floor((rh - self.size) / 2)

    def map(self, boxes: np.ndarray, wh: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Boxes normalised to their images (``[n, 4]``; images ``wh`` ``[n, 2]`` pixels)
        -> boxes normalised to the model input, clipped to it, and which keep an area."""
        b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        w, h = (np.asarray(wh, dtype=np.float64).reshape(-1, 2)[:, i] for i in (0, 1))
        rw, rh = self.resized(w, h)
        left, top = self.crop_offset(rw, rh)
        out = np.empty_like(b)
        out[:, 0] = (b[:, 0] * rw - left) / self.size
        out[:, 2] = (b[:, 2] * rw - left) / self.size
        out[:, 1] = (b[:, 1] * rh - top) / self.size
        out[:, 3] = (b[:, 3] * rh - top) / self.size
        out = np.clip(out, 0.0, 1.0)
        keep = (out[:, 2] > out[:, 0]) & (out[:, 3] > out[:, 1])
        return out.astype(np.float32), keep


def _side(size: Any) -> int | None:
    """The side of a square ``size`` (an int, ``[s]`` or ``(s, s)``), else None."""
    if isinstance(size, int):
        return size
    if isinstance(size, Sequence) and len(size) == 1:
        return int(size[0])
    if isinstance(size, Sequence) and len(size) == 2 and int(size[0]) == int(size[1]):
        return int(size[0])
    return None


def _torchvision_geometry(transforms: Sequence[Any]) -> InputGeometry | None:
    """open_clip's eval transform: ``Resize(s)`` + ``CenterCrop(c)`` (shortest side, then
    crop) or ``Resize((s, s))`` (squash); letterboxing and random crops are not mapped."""
    resize = crop = None
    for t in transforms:
        name = type(t).__name__
        if name in ("ResizeKeepRatio", "CenterCropOrPad", "RandomResizedCrop"):
            return None
        if name == "Resize" and resize is None:
            resize = t.size
        elif name == "CenterCrop" and crop is None:
            crop = t.size
    if resize is None:
        return None
    squash = not isinstance(resize, int) and len(resize) == 2
    side = _side(resize)
    if side is None:
        return None
    crop_side = None if crop is None else _side(crop)
    if squash:
        return InputGeometry("squash", side, side) if crop_side in (None, side) else None
    if crop_side is None:
        return None
    return InputGeometry("shortest_crop", crop_side, side, "torchvision")


def _hf_geometry(proc: Any) -> InputGeometry | None:
    size = dict(getattr(proc, "size", None) or {})
    if not getattr(proc, "do_resize", True):
        return None
    if "shortest_edge" in size:
        crop = dict(getattr(proc, "crop_size", None) or {})
        if not getattr(proc, "do_center_crop", False) or crop.get("height") != crop.get("width"):
            return None
        return InputGeometry("shortest_crop", int(crop["height"]), int(size["shortest_edge"]), "hf")
    if "height" in size and size["height"] == size.get("width"):
        return InputGeometry("squash", int(size["height"]), int(size["height"]))
    return None


def input_geometry(pair: Any) -> InputGeometry | None:
    """The geometry of ``pair``'s preprocessing, or None when it is not one vlmfast can
    map boxes through (then no boxes are stored)."""
    pre = getattr(pair, "_preprocess", None)
    if pre is None:
        return None
    name = type(pre).__name__
    if name == "SyntheticPreprocess":
        return InputGeometry("squash", int(pre.image_size), int(pre.image_size))
    if name == "HFPreprocess":
        proc = pre._processor()
        if proc:
            return _hf_geometry(proc)
        size = int(pre.image_size)
        if pre.family == "clip":
            return InputGeometry("shortest_crop", size, size, "hf_fallback")
        return InputGeometry("squash", size, size)
    transforms = getattr(pre, "transforms", None)
    if transforms is not None:
        return _torchvision_geometry(list(transforms))
    return None


# ---------------------------------------------------------------- from a source


def box_attrs(geometry: InputGeometry, kinds: Sequence[str]) -> dict[str, Any]:
    """The root-attrs entry ``boxes``: the frame, the geometry that mapped the boxes into
    it, and the concept kinds boxes carry (the columns patch scoring scores). The patch
    grid is the store's ``towers.image`` record."""
    return {
        "frame": "model input: x0, y0, x1, y1 normalised to [0, 1]",
        "geometry": asdict(geometry),
        "kinds": list(kinds),
    }


def batch_boxes(
    source: Any, pair: Any
) -> tuple[Callable[[Sequence[Any]], BoxRows], dict[str, Any]] | None:
    """``(boxes_of(records), attrs)`` when ``source`` has boxes and ``pair``'s
    preprocessing can be mapped; None otherwise (a warning says why boxes are missing)."""
    if not getattr(source, "has_boxes", False):
        return None
    geometry = input_geometry(pair)
    if geometry is None:
        warnings.warn(
            f"{source.spec}: the pair's image preprocessing is not one vlmfast can map "
            "boxes through (resize+centre-crop or squash); the store gets no boxes, so "
            "--tokens patch will not work on it",
            stacklevel=2,
        )
        return None

    def boxes_of(records: Sequence[Any]) -> BoxRows:
        found = source.boxes(records)
        ids = np.array([r.sample_id for r in records], dtype=np.int64)
        wh = np.array(
            [r.image.size if r.image is not None else (0, 0) for r in records], dtype=np.float64
        ).reshape(-1, 2)
        if found is None or not len(found.record):
            c = 0 if found is None else found.concepts.shape[1]
            return BoxRows(
                np.zeros(0, np.int64), np.zeros((0, 4), np.float32), np.zeros((0, c), bool)
            )
        rec = found.record
        mapped, keep = geometry.map(found.boxes, wh[rec])
        keep &= wh[rec, 0] > 0
        order = np.argsort(rec[keep], kind="stable")  # sample order, like every label array
        return BoxRows(ids[rec][keep][order], mapped[keep][order], found.concepts[keep][order])

    return boxes_of, box_attrs(geometry, list(getattr(source, "box_kinds", ())))


# ---------------------------------------------------------------- store arrays


def create_box_arrays(
    native: Any, root: str, chunk_rows: int, compression: str, n_concepts: int
) -> None:
    """The empty box arrays of a new store."""
    native.store_create_array(
        root, BOX_SAMPLE_ARRAY, "int64", None, chunk_rows, compression, dims=BOX_DIMS[:1]
    )
    native.store_create_array(
        root, BOXES_ARRAY, "float32", 4, chunk_rows, compression, dims=BOX_DIMS
    )
    native.store_create_array(
        root,
        BOX_CONCEPTS_ARRAY,
        "bool",
        max(n_concepts, 1),
        chunk_rows,
        compression,
        dims=BOX_CONCEPT_DIMS,
    )


def box_array_specs(n_concepts: int) -> dict[str, tuple[np.dtype[Any], int | None]]:
    """Carrier dtype and width of each box array (for reading and merging)."""
    return {
        BOX_SAMPLE_ARRAY: (np.dtype(np.int64), None),
        BOXES_ARRAY: (np.dtype(np.float32), 4),
        BOX_CONCEPTS_ARRAY: (np.dtype(np.bool_), max(n_concepts, 1)),
    }


def check_box_rows(boxes: BoxRows, n_concepts: int) -> list[np.ndarray]:
    """The three arrays of ``boxes`` to append (validated, contiguous, padded columns)."""
    c = max(n_concepts, 1)
    sample = np.asarray(boxes.sample)
    n = len(sample)
    if sample.ndim != 1 or not np.issubdtype(sample.dtype, np.integer):
        raise ShapeError(f"boxes.sample has shape {sample.shape} {sample.dtype}; expected [n] ints")
    xy = np.asarray(boxes.boxes, dtype=np.float32)
    if xy.shape != (n, 4):
        raise ShapeError(f"boxes.boxes has shape {xy.shape}; expected ({n}, 4)")
    if n and (not np.isfinite(xy).all() or xy.min() < 0 or xy.max() > 1):
        raise InputError("boxes.boxes must be finite and normalised to [0, 1]")
    con = np.asarray(boxes.concepts, dtype=bool)
    if con.shape != (n, n_concepts) and con.shape != (n, c):
        raise ShapeError(f"boxes.concepts has shape {con.shape}; expected ({n}, {n_concepts})")
    if con.shape[1] != c:
        con = np.concatenate([con, np.zeros((n, c - con.shape[1]), bool)], axis=1)
    return [
        np.ascontiguousarray(sample.astype(np.int64)),
        np.ascontiguousarray(xy),
        np.ascontiguousarray(con),
    ]


def read_boxes(store: Any) -> BoxRows | None:
    """The committed boxes of ``store`` (an ``ActivationStore``), or None without boxes."""
    attrs = store._attrs
    if not attrs.get("boxes"):
        return None
    n = int(attrs.get("committed_box_rows", 0))
    c_real = len(attrs["concepts"]["names"])
    specs = box_array_specs(c_real)
    cols = [store.read_raw(name, dt, w, 0, n) for name, (dt, w) in specs.items()]
    return BoxRows(cols[0], cols[1], cols[2][:, :c_real])


# ---------------------------------------------------------------- patch labels


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
        """From a store's ``towers.image`` record (``cls_token``, ``image_size``, ``patch_size``)."""
        return cls(int(image["image_size"]), int(image["patch_size"]), bool(image["cls_token"]))


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
    """Labels of image token rows by the patch each shows: ``(labels, keep)``.

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
