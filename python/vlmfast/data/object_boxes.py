"""``ObjectBoxes``: where the objects of a batch of records are, as a source knows it.

A source's :meth:`~vlmfast.data.sources.base.PairSource.boxes` returns one; the cache
maps the boxes into the model-input frame (``vlmfast.caching.boxes``) and stores them
with the labels, for patch-level ground truth (``score --tokens patch``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vlmfast.errors import ShapeError


@dataclass
class ObjectBoxes:
    """The boxes of a batch of records, in each record's own image frame."""

    record: np.ndarray
    """int64 ``[n]``: index (into the batch's records) of the record each box belongs to."""
    boxes: np.ndarray
    """float32 ``[n, 4]``: ``(x0, y0, x1, y1)`` normalised to ``[0, 1]`` by the width and
    height of the record's image (x right, y down; x1/y1 end-exclusive edges)."""
    concepts: np.ndarray
    """bool ``[n, C]``: each box's concepts, over the columns of the source's labels."""

    def __post_init__(self) -> None:
        self.record = np.asarray(self.record, dtype=np.int64).reshape(-1)
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.concepts = np.asarray(self.concepts, dtype=bool)
        n = len(self.record)
        if self.boxes.shape[0] != n or self.concepts.ndim != 2 or self.concepts.shape[0] != n:
            raise ShapeError(
                f"ObjectBoxes: {n} records but boxes {self.boxes.shape} and concepts "
                f"{self.concepts.shape}; expected [n, 4] and [n, C]"
            )
