"""The matched image-caption pairs a fusion test runs on, with both label sets.

Image units are picked against what each image shows (``image_labels``), text units
against what each caption says (``caption_labels``); the causal test reads logits of
every image with every caption of the set.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from vlmfast.errors import InputError, ShapeError


@dataclass
class FusionData:
    """Matched pairs: pixels, captions, image labels and caption labels over one concept list.

    Raises:
        ShapeError: (constructing) captions, labels or kinds do not match the images and
            concepts.
        InputError: (constructing) fewer than 4 pairs.
    """

    images: torch.Tensor
    """``[N, 3, H, W]`` model-input pixels (``pair.preprocess``)."""
    captions: list[str]
    """Caption ``i`` describes image ``i``."""
    image_labels: npt.NDArray[np.bool_]
    """``[N, C]`` what image ``i`` shows."""
    caption_labels: npt.NDArray[np.bool_]
    """``[N, C]`` what caption ``i`` says."""
    concepts: tuple[str, ...]
    kinds: tuple[str, ...]
    """Kind of each concept (object, color, relation, ...)."""

    def __post_init__(self) -> None:
        n = int(self.images.shape[0])
        self.image_labels = np.asarray(self.image_labels, dtype=bool)
        self.caption_labels = np.asarray(self.caption_labels, dtype=bool)
        self.concepts, self.kinds = tuple(self.concepts), tuple(self.kinds)
        if len(self.captions) != n:
            raise ShapeError(f"fusion data has {n} images but {len(self.captions)} captions")
        want = (n, len(self.concepts))
        for name in ("image_labels", "caption_labels"):
            if getattr(self, name).shape != want:
                raise ShapeError(
                    f"fusion data {name} must be {list(want)}, got {getattr(self, name).shape}"
                )
        if len(self.kinds) != len(self.concepts):
            raise ShapeError("fusion data needs one kind per concept")
        if n < 4:
            raise InputError(f"fusion data needs at least 4 pairs, got {n}")

    @property
    def n(self) -> int:
        return int(self.images.shape[0])

    def subset(self, idx: Sequence[int] | npt.NDArray[np.int64]) -> FusionData:
        """Returns the pairs ``idx`` (same concepts)."""
        ix = np.asarray(idx, dtype=np.int64)
        return FusionData(
            self.images[torch.as_tensor(ix)],
            [self.captions[i] for i in ix],
            self.image_labels[ix],
            self.caption_labels[ix],
            self.concepts,
            self.kinds,
        )

    def split(self, fraction: float, seed: int) -> tuple[FusionData, FusionData]:
        """Returns ``(first, rest)``: a seeded random ``fraction`` of the pairs and the others.

        Raises:
            InputError: ``fraction`` outside (0, 1) or a part with fewer than 4 pairs.
        """
        if not 0.0 < fraction < 1.0:
            raise InputError(f"split fraction must be in (0, 1), got {fraction}")
        perm = np.random.default_rng(seed).permutation(self.n)
        cut = round(fraction * self.n)
        if min(cut, self.n - cut) < 4:
            raise InputError(
                f"splitting {self.n} pairs at {fraction} leaves a part under 4 pairs; "
                "give more pairs or select_data="
            )
        return self.subset(np.sort(perm[:cut])), self.subset(np.sort(perm[cut:]))

    def eval_set(self) -> Any:
        """Returns the pairs as a :class:`vlmfast.causal.core.evalset.EvalSet` (image labels)."""
        from vlmfast.causal.core.evalset import EvalSet

        return EvalSet(
            self.images, list(self.captions), self.image_labels, self.concepts, self.kinds
        )

    @classmethod
    def from_source(cls, pair: Any, source: Any, n: int = 256) -> FusionData:
        """Returns the first ``n`` records of ``source`` (a spec such as ``synthetic:n=512,seed=3``
        or an opened :class:`vlmfast.data.PairSource`), preprocessed for ``pair``.

        Raises:
            InputError: the source yields fewer than 4 records.
        """
        from vlmfast.data import open_source

        src = open_source(source) if isinstance(source, str) else source
        records = list(islice(iter(src), n))
        if len(records) < 4:
            raise InputError(
                f"fusion data: {getattr(src, 'spec', source)} gave {len(records)} records"
            )
        labels = src.labels(records)
        said = src.caption_labels(records)
        return cls(
            pair.preprocess([r.image for r in records]),
            [r.caption for r in records],
            np.asarray(labels.matrix, dtype=bool),
            np.asarray(said.matrix, dtype=bool),
            tuple(labels.names),
            tuple(labels.kinds),
        )

    @classmethod
    def from_eval_set(cls, ev: Any, caption_labels: Any = None) -> FusionData:
        """Returns an :class:`EvalSet`'s pairs; its image labels stand for the caption labels
        unless ``caption_labels`` ``[N, C]`` is given."""
        cap = ev.labels if caption_labels is None else caption_labels
        return cls(ev.images, list(ev.captions), ev.labels, cap, ev.concepts, ev.kinds)
