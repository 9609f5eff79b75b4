"""How a pair's image preprocessing maps an image onto the model input, so object boxes
given in a record's own image frame can be stored in the model-input frame."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt


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
        """Returns the sides ``(width, height)`` of the resized image before the crop, in pixels."""
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
        """Returns the left and top of the crop in the resized image, in pixels."""
        if self.mode == "squash":
            return np.zeros_like(rw), np.zeros_like(rh)
        if self.rounding == "torchvision":
            return np.round((rw - self.size) / 2.0), np.round((rh - self.size) / 2.0)
        return np.floor((rw - self.size) / 2), np.floor((rh - self.size) / 2)

    def map(self, boxes: np.ndarray, wh: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Returns ``(boxes, keep)``: boxes normalised to their images (``[n, 4]``; images
        ``wh`` ``[n, 2]`` pixels) mapped to boxes normalised to the model input ([0, 1]),
        clipped to it, and the ``bool[n]`` mask of those that keep an area."""
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
    """Returns the geometry of ``pair``'s preprocessing, or None when it is not one vlmfast can
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
