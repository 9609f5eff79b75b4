"""Grounding inputs from a data source: model-input pixels, named object boxes, and the
object each caption names (for :func:`vlmfast.crossmodal.grounding.grounding_scores`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vlmfast.crossmodal.grounding import NO_BOXES, Box
from vlmfast.errors import InputError


@dataclass
class GroundingInputs:
    """What :func:`grounding_scores` takes, built from a source's records."""

    pixels: torch.Tensor
    """``[N, 3, S, S]`` model-input pixels."""
    boxes: list[list[tuple[str, Box]]]
    """Per image, ``(object name, box in the model-input frame)``."""
    names: list[str]
    """Per image, the name of the object the caption names."""
    captions: list[str]
    """Per image, its caption."""
    skipped: int
    """Records left out: the caption names no single object of its image."""


def grounding_inputs(pair: Any, source: Any, n: int = 64) -> GroundingInputs:
    """Returns the first ``n`` usable records of ``source`` as grounding inputs.

    Each object is named by its box's concepts (e.g. ``"circle red small"``); the named
    object is the one whose concepts overlap the caption's labels most (a record where
    that is not one object, or is none, is skipped and counted).

    Raises:
        InputError: ``source`` has no boxes, or the pair's preprocessing cannot map them.
    """
    from vlmfast.caching.geometry import input_geometry

    spec = getattr(source, "spec", repr(source))
    if not getattr(source, "has_boxes", False):
        raise InputError(f"grounding needs object boxes; {spec} has none: {NO_BOXES}")
    geometry = input_geometry(pair)
    if geometry is None:
        raise InputError(f"{spec}: the pair's preprocessing is not one boxes can be mapped through")
    records, boxes, names, skipped = [], [], [], 0
    for rec in source:
        objs, name = _record_objects(source, rec, geometry)
        if name is None:
            skipped += 1
            continue
        records.append(rec)
        boxes.append(objs)
        names.append(name)
        if len(records) >= n:
            break
    if not records:
        raise InputError(f"grounding: no record of {spec} has a caption naming one boxed object")
    pixels = pair.preprocess([r.image for r in records])
    return GroundingInputs(pixels, boxes, names, [r.caption for r in records], skipped)


def _record_objects(
    source: Any, rec: Any, geometry: Any
) -> tuple[list[tuple[str, Box]], str | None]:
    """One record's named boxes in the model-input frame and the caption's object name
    (the caption's first mention where the record lists mentions, the synthetic
    subject; else the box sharing most concepts with the caption's labels)."""
    found = source.boxes([rec])
    if found is None or not len(found.record):
        return [], None
    col_names = list(source.labels([rec]).names)
    said = np.asarray(source.caption_labels([rec]).matrix, dtype=bool).reshape(-1)
    wh = np.tile(np.asarray(rec.image.size, dtype=np.float64), (len(found.boxes), 1))
    mapped, keep = geometry.map(found.boxes, wh)
    objs: list[tuple[str, Box]] = []
    overlap: list[int] = []
    mentions = (rec.meta.get("caption") or {}).get("mentions") if rec.meta else None
    subject = set(map(str, mentions[0].values())) if mentions else None
    for j in np.flatnonzero(keep):
        cols = np.flatnonzero(found.concepts[j])
        objs.append((" ".join(col_names[c] for c in cols), [float(v) for v in mapped[j]]))
        words = {col_names[c] for c in cols}
        overlap.append(len(subject & words) if subject else int(said[cols].sum()))
    if not overlap or max(overlap) == 0:
        return objs, None
    best = [k for k, o in enumerate(overlap) if o == max(overlap)]
    name = objs[best[0]][0]
    if len(best) != 1 or sum(o[0] == name for o in objs) != 1:
        return objs, None
    return objs, name


def recolor_named(
    pixels: torch.Tensor,
    boxes: list[list[tuple[str, Box]]],
    names: list[str],
    threshold: float = 0.5,
) -> torch.Tensor:
    """Returns corrupted copies of ``pixels`` ``[N, 3, S, S]`` (model inputs) where the named object
    changes color: inside its box, the pixels farther than ``threshold`` (Euclidean, in
    input units) from the median of the box's border are the object's, and their channels
    are rolled (R, G, B -> G, B, R). The scene, the other objects and the caption stay.

    Raises:
        InputError: a name matches no single object (as in ``grounding_scores``).
    """
    out = pixels.clone()
    side = pixels.shape[-1]
    for i, (objs, name) in enumerate(zip(boxes, names)):
        hits = [b for n, b in objs if n == name]
        if len(hits) != 1:
            raise InputError(f"image {i}: the caption's name {name!r} matches {len(hits)} objects")
        x0, y0, x1, y1 = (round(float(v) * side) for v in hits[0])
        x0, y0 = max(0, min(x0, side - 1)), max(0, min(y0, side - 1))
        x1, y1 = max(x0 + 1, min(x1, side)), max(y0 + 1, min(y1, side))
        patch = out[i, :, y0:y1, x0:x1]
        border = torch.cat([patch[:, 0], patch[:, -1], patch[:, :, 0], patch[:, :, -1]], dim=1)
        ground = border.median(dim=1).values[:, None, None]
        obj = (patch - ground).norm(dim=0) > threshold
        patch[:, obj] = patch.roll(-1, dims=0)[:, obj]
    return out
