"""A batch's concept labels (and object boxes) from the source, as a store takes them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from vlmfast.caching.boxes import batch_boxes
from vlmfast.errors import InputError
from vlmfast.store.schema import DEFAULT_IMAGE_BASIS


@dataclass
class BatchLabels:
    """A batch's concept labels: what each image shows and what each caption says."""

    image: Any
    """ConceptLabels of the images (``source.labels``)."""
    caption: Any
    """ConceptLabels of the captions (``source.caption_labels``), same columns."""
    image_basis: str
    """``source.image_label_basis``."""
    boxes: Any = None
    """The batch's object boxes in the model-input frame (``vlmfast.store.BoxRows``),
    None when the source has none."""
    box_attrs: dict[str, Any] | None = None
    """The store's ``boxes`` attrs (geometry, kinds), with ``boxes``."""

    @property
    def names(self) -> list[str]:
        return list(self.image.names)

    @property
    def kinds(self) -> list[str]:
        return list(self.image.kinds)


def labels_of(source: Any, pair: Any = None) -> Callable[[Sequence[Any]], BatchLabels]:
    """``labels(batch)``: a batch's labels from ``source`` (with its object boxes, mapped
    through ``pair``'s preprocessing, when the source has boxes)."""
    basis = str(getattr(source, "image_label_basis", DEFAULT_IMAGE_BASIS))
    with_boxes = batch_boxes(source, pair) if pair is not None else None

    def labels(batch: Sequence[Any]) -> BatchLabels:
        image = source.labels(batch)
        caption = source.caption_labels(batch)
        if list(caption.names) != list(image.names):
            raise InputError(
                "the source's caption labels have other concepts than its image labels"
            )
        if with_boxes is None:
            return BatchLabels(image, caption, basis)
        return BatchLabels(image, caption, basis, with_boxes[0](batch), with_boxes[1])

    return labels
