"""What reads of a store give back: a hook's row index, concept labels, object boxes."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from vlmfast.store.schema import DEFAULT_IMAGE_BASIS


@dataclass(frozen=True)
class StoreIndex:
    """Per-row index of one hook (committed rows only)."""

    sample: np.ndarray
    """int64 sample id of each row."""
    position: np.ndarray
    """int32 token position of each row (-1 for pooled / embedding rows)."""
    modality: np.ndarray
    """uint8 modality of each row: 0 image, 1 text."""


@dataclass(frozen=True)
class Labels:
    """Concept labels of the cached samples."""

    matrix: np.ndarray
    """bool ``[samples, C]``, one row per cached sample (in cache order)."""
    sample: np.ndarray
    """int64 sample id of each row of ``matrix``."""
    names: list[str]
    """Concept names, one per column."""
    kinds: list[str]
    """Concept kinds (object, color, relation, ...), one per column."""
    caption: np.ndarray | None = None
    """bool ``[samples, C]``: what each sample's caption says (same rows and columns as
    ``matrix``); None for stores written before captions had their own labels."""
    image_basis: str = DEFAULT_IMAGE_BASIS
    """Where ``matrix`` comes from: ``scene`` (exact), ``instances+caption``, ``caption``."""

    def for_modality(self, modality: int) -> np.ndarray:
        """Returns the label matrix rows of ``modality`` are scored against: image rows (0) against
        what the image shows, text rows (1) against what the caption says. A store
        without caption labels gives ``matrix`` for both (with a warning for text)."""
        if modality == 0 or self.caption is None:
            if modality != 0:
                warnings.warn(
                    "this store has no caption labels (written before labels/caption): text "
                    "rows are scored against the image labels; re-cache for caption labels",
                    stacklevel=2,
                )
            return self.matrix
        return self.caption


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
