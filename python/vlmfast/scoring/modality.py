"""Modality invariance: the same concept read out in both modalities.

CLIP has no cross-attention: the towers meet only in the logit. Two sound
notions of a "cross-modal" unit, both scored **within** each modality (the
modality gap makes pooled AUROCs meaningless):

* **Shared-space SAE** (trained on ``image.embed`` and ``text.embed`` rows together,
  modality in the store index): a feature is *modality-invariant* for concept c
  when it is selective for c on the image rows **and** selective for c on the
  text rows (:func:`invariant_features`).
* **Units inside the towers** (an image neuron and a text neuron live in different
  spaces): for each concept, the best image unit and the best text unit form a
  matched pair with statistic ``min(AUROC_image, AUROC_text)``. Its p-value comes
  from a permutation null that shuffles the labels within each modality and
  recomputes the same max-over-units statistic, so the selection of the best
  units is part of the null (:func:`cross_tower_pairs`); BH over concepts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from vlmfast.errors import InputError
from vlmfast.stats import auroc, benjamini_hochberg

IMAGE = 0
TEXT = 1
MODALITY_NAMES = {IMAGE: "image", TEXT: "text"}


def invariant_features(
    selective_image: npt.NDArray[np.bool_], selective_text: npt.NDArray[np.bool_]
) -> npt.NDArray[np.bool_]:
    """Returns the ``bool[units, concepts]`` mask of units selective for the concept in
    both modalities.

    Raises:
        InputError: the two masks differ in shape.
    """
    if selective_image.shape != selective_text.shape:
        raise InputError(
            f"image selectivity {selective_image.shape} and text selectivity "
            f"{selective_text.shape} differ in shape"
        )
    return selective_image & selective_text


@dataclass
class CrossTowerPairs:
    """Per concept: the matched (image unit, text unit) pair and its permutation test."""

    image_unit: npt.NDArray[np.int64]
    text_unit: npt.NDArray[np.int64]
    image_auroc: npt.NDArray[np.float64]
    text_auroc: npt.NDArray[np.float64]
    statistic: npt.NDArray[np.float64]
    """``min(image_auroc, text_auroc)`` of the best units."""
    pvalue: npt.NDArray[np.float64]
    """``(1 + #null ≥ statistic) / (1 + n_perm)``."""
    significant: npt.NDArray[np.bool_]
    """BH over concepts at ``alpha``."""

    def to_dict(self) -> dict[str, Any]:
        """Returns the fields as JSON-ready lists."""
        return {k: v.tolist() for k, v in self.__dict__.items()}


def _best(table: npt.NDArray[np.float64]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    filled = np.where(np.isnan(table), -np.inf, table)
    idx = filled.argmax(0)
    return idx.astype(np.int64), table[idx, np.arange(table.shape[1])]


def cross_tower_pairs(
    image_acts: Any,
    image_labels: Any,
    text_acts: Any,
    text_labels: Any,
    *,
    n_perm: int = 200,
    seed: int = 0,
    alpha: float = 0.05,
) -> CrossTowerPairs:
    """Matched image/text unit pairs per concept, tested against a shuffled-label null.

    ``image_acts[N_i, U_i]`` with ``image_labels[N_i, C]``; ``text_acts[N_t, U_t]``
    with ``text_labels[N_t, C]`` (same concept columns). Seeded and reproducible.

    Returns:
        The best pair per concept with its AUROCs (in [0, 1]), permutation p-value and
            BH decision, as :class:`CrossTowerPairs`.

    Raises:
        InputError: the label tables have different concept columns, or ``n_perm < 1``.
    """
    img_l = np.asarray(image_labels, dtype=bool)
    txt_l = np.asarray(text_labels, dtype=bool)
    if img_l.shape[1] != txt_l.shape[1]:
        raise InputError(
            f"image_labels has {img_l.shape[1]} concepts but text_labels has {txt_l.shape[1]}"
        )
    if n_perm < 1:
        raise InputError(f"n_perm must be >= 1, got {n_perm}")
    a_img = auroc(image_acts, img_l)
    a_txt = auroc(text_acts, txt_l)
    iu, ia = _best(a_img)
    tu, ta = _best(a_txt)
    stat = np.minimum(ia, ta)
    rng = np.random.default_rng(seed)
    exceed = np.zeros(len(stat))
    for _ in range(n_perm):
        ni = _best(auroc(image_acts, img_l[rng.permutation(len(img_l))]))[1]
        nt = _best(auroc(text_acts, txt_l[rng.permutation(len(txt_l))]))[1]
        exceed += np.minimum(ni, nt) >= stat
    pv = (1.0 + exceed) / (1.0 + n_perm)
    pv = np.where(np.isnan(stat), np.nan, pv)
    return CrossTowerPairs(iu, tu, ia, ta, stat, pv, benjamini_hochberg(pv, alpha))
