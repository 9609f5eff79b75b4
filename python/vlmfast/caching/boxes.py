"""Object boxes of a batch from its source, mapped into the model-input frame for the
store (``vlmfast.store.box_arrays`` holds them; ``vlmfast.store.patch_grid`` turns them
into patch-level ground truth)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from vlmfast.caching.geometry import InputGeometry, input_geometry
from vlmfast.store.records import BoxRows
from vlmfast.store.schema import BOXES_FRAME, BOXES_GEOMETRY, BOXES_KINDS


def box_attrs(geometry: InputGeometry, kinds: Sequence[str]) -> dict[str, Any]:
    """Returns the root-attrs entry ``boxes``: the frame, the geometry that mapped the boxes into
    it, and the concept kinds boxes carry (the columns patch scoring scores). The patch
    grid is the store's ``towers.image`` record."""
    return {
        BOXES_FRAME: "model input: x0, y0, x1, y1 normalised to [0, 1]",
        BOXES_GEOMETRY: asdict(geometry),
        BOXES_KINDS: list(kinds),
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
