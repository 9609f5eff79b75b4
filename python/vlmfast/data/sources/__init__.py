"""Image-text pair sources (folder, COCO, WebDataset, iterables, synthetic)."""

from vlmfast.data.sources.base import PairSource
from vlmfast.data.sources.open import open_source

__all__ = ["PairSource", "open_source"]
