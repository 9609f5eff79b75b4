"""Automated labels: each unit's best concepts, and text-side probing with prompts."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from vlmfast.errors import InputError
from vlmfast.stats import UnitScores, score_dense, score_sparse

DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a close-up photo of a {}.",
    "a picture of the {}.",
    "a rendering of a {}.",
    "a cropped photo of the {}.",
)
"""CLIP-style prompt templates for text-side probing (``{}`` is the concept name)."""


@dataclass
class BestConcepts:
    """The ``top`` highest-AUROC concepts of every unit."""

    concept: npt.NDArray[np.int64]
    """``[units, top]`` concept column, best first (-1 where fewer concepts)."""
    auroc: npt.NDArray[np.float64]
    ci_low: npt.NDArray[np.float64]
    ci_high: npt.NDArray[np.float64]

    def label(self, unit: int, names: Sequence[str]) -> list[dict[str, Any]]:
        """Returns readable label records of one unit: ``{"concept", "auroc", "ci"}`` per
        concept, best first (AUROC and interval in [0, 1])."""
        out = []
        for c, a, lo, hi in zip(
            self.concept[unit], self.auroc[unit], self.ci_low[unit], self.ci_high[unit]
        ):
            if c >= 0:
                out.append({"concept": names[c], "auroc": float(a), "ci": [float(lo), float(hi)]})
        return out


def best_concepts(scores: UnitScores, top: int = 3, level: float = 0.95) -> BestConcepts:
    """Returns each unit's ``top`` concepts by AUROC (NaN AUROCs rank last), with DeLong
    intervals (in [0, 1]), as :class:`BestConcepts`."""
    a = np.where(np.isnan(scores.auroc), -np.inf, scores.auroc)
    c = a.shape[1]
    top_eff = min(top, c)
    if top_eff == 0:
        empty = np.zeros((a.shape[0], 0))
        return BestConcepts(empty.astype(np.int64), empty, empty, empty)
    part = np.argpartition(-a, top_eff - 1, axis=1)[:, :top_eff]
    order = np.argsort(-np.take_along_axis(a, part, 1), axis=1, kind="stable")
    idx = np.take_along_axis(part, order, 1)
    val = np.take_along_axis(scores.auroc, idx, 1)
    if scores.se is not None:
        lo, hi = scores.ci(level)
        lo, hi = np.take_along_axis(lo, idx, 1), np.take_along_axis(hi, idx, 1)
    else:
        lo = hi = np.full(val.shape, np.nan)
    idx = np.where(np.isnan(val), -1, idx)
    return BestConcepts(idx.astype(np.int64), val, lo, hi)


def prompt_set(
    names: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES
) -> tuple[list[str], npt.NDArray[np.bool_]]:
    """Returns the prompts ``template.format(name)`` for every concept and template, and
    their one-hot labels ``bool[prompts, concepts]``.

    Raises:
        InputError: no template, or a template without ``{}``.
    """
    if not templates or any("{}" not in t for t in templates):
        raise InputError("every prompt template must contain '{}'")
    texts: list[str] = []
    rows: list[int] = []
    for c, name in enumerate(names):
        for t in templates:
            texts.append(t.format(name))
            rows.append(c)
    labels = np.zeros((len(texts), len(names)), dtype=bool)
    labels[np.arange(len(texts)), rows] = True
    return texts, labels


def probe_texts(
    encode: Callable[[list[str]], Any],
    names: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    *,
    n_features: int | None = None,
) -> UnitScores:
    """Text-side probing: scores units on prompts naming each concept.

    ``encode(texts)`` returns either ``(values[n, k], indices[n, k])`` top-k SAE
    codes (then ``n_features`` is required) or dense activations ``[n, units]``.
    Each prompt row is a positive for its own concept and a negative for the others.

    Returns:
        The units' scores on the prompts as :class:`UnitScores` (AUROC in [0, 1]).

    Raises:
        InputError: ``encode`` returns codes but ``n_features`` is not given.
    """
    texts, labels = prompt_set(names, templates)
    out = encode(texts)
    if isinstance(out, tuple):
        if n_features is None:
            raise InputError("n_features is required when encode returns (values, indices)")
        values, indices = out
        return score_sparse(indices, values, labels, n_features)
    return score_dense(out, labels)


def probe_imagenet(
    encode: Callable[[list[str]], Any],
    *,
    n_features: int | None = None,
    templates: Sequence[str] | None = None,
) -> tuple[UnitScores, list[str]]:
    """Text-side probing of the 200 ImageNet-R concepts with CLIP's 80 ImageNet templates.

    Uses the vocabulary and templates of ``vlmfast.data.concepts``. See :func:`probe_texts`.

    Returns:
        The scores (:class:`UnitScores`, one column per class, AUROC in [0, 1]) and
            the class names.
    """
    from vlmfast.data.concepts import IMAGENET_TEMPLATES, Vocabulary

    names = Vocabulary.bundled("imagenet_r200").names
    scores = probe_texts(encode, names, templates or IMAGENET_TEMPLATES, n_features=n_features)
    return scores, names
