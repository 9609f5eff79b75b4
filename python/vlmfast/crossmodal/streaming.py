"""The shared-dictionary statistics over a whole store: one streaming pass.

:func:`shared_dictionary_stats` reads matched pairs' top-k codes chunk by chunk once
and hands them to one Rust call (:func:`~vlmfast.crossmodal.pair_moments.score_shared_pairs`):
the exact scorer buckets each modality's nonzeros by feature, each feature's moments
are summed by merging its image and text buckets by pair, then both buckets are
scored (image codes against what the image shows, caption codes against what the
caption says). Everything else is closed form in the moments:

* **Modality split** ``s = Σa / (Σa + Σb)`` and its sign-flip p-value
  ``z = Σ(a−b) / sqrt(Σ(a−b)²)``: identical to :func:`~vlmfast.crossmodal.modality_split`.
  Interval: the delta method for a ratio of means (normal, from ``Σa², Σab, Σb²``)
  where the in-memory analysis uses a percentile bootstrap; the two agree when a
  feature fires on more than a handful of pairs (tested), and the delta method needs no
  ``B`` extra passes over 2M rows.
* **Bridge Score** ``n/(n−1) · (mean ab − mean a · mean b) / sqrt(mean a² · mean b²)``:
  identical to :func:`~vlmfast.crossmodal.bridge_scores` (matched minus the exact
  mismatched expectation). Interval: the delta method over the means of
  ``(a, b, ab, a², b²)``, whose covariance needs the fourth-order moments. Null: random
  re-pairing of captions, by the permutation central limit theorem (the statistic
  ``Σ a_i b_π(i)`` has mean ``Σa Σb / n`` and variance ``S_aa S_bb / (n − 1)`` with
  ``S_aa = Σa² − (Σa)²/n``): a one-sided normal p-value, where the in-memory analysis
  counts ``n_null`` drawn permutations (whose smallest p is ``1/(n_null+1)``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from vlmfast.crossmodal.feature_pairs import BridgeScores, ModalitySplit, split_labels
from vlmfast.crossmodal.invariant import DEFAULT_THRESHOLDS, InvariantCurve, invariant_curve
from vlmfast.crossmodal.pair_moments import (
    Array,
    PairChunk,
    PairMomentSums,
    read_pairs,
    score_shared_pairs,
)
from vlmfast.errors import InputError
from vlmfast.stats.significance import z_for_level


def _normal_sf(z: Array) -> Array:
    erfc = np.frompyfunc(math.erfc, 1, 1)
    return np.asarray(erfc(np.asarray(z, dtype=np.float64) / math.sqrt(2.0)), dtype=np.float64) / 2


def _cov(m: PairMomentSums) -> tuple[Array, Array]:
    """Means ``[F, 5]`` of ``(a, b, ab, aa, bb)`` and the covariance ``[F, 5, 5]`` of those means."""
    n = max(m.n, 1)
    mu = np.stack([m[k] for k in ("a", "b", "ab", "aa", "bb")], axis=1) / n
    second = [
        ["aa", "ab", "aab", "aaa", "abb"],
        ["ab", "bb", "abb", "aab", "bbb"],
        ["aab", "abb", "aabb", "aaab", "abbb"],
        ["aaa", "aab", "aaab", "aaaa", "aabb"],
        ["abb", "bbb", "abbb", "aabb", "bbbb"],
    ]
    e2 = np.stack([np.stack([m[k] for k in row], axis=1) for row in second], axis=1) / n
    return mu, (e2 - mu[:, :, None] * mu[:, None, :]) / n


def _delta_sd(grad: Array, cov: Array) -> Array:
    return np.sqrt(np.maximum(np.einsum("fi,fij,fj->f", grad, cov, grad), 0.0))


def split_from_moments(
    m: PairMomentSums, *, dominance: float = 0.9, alpha: float = 0.05, level: float = 0.95
) -> ModalitySplit:
    """Returns the modality split of each feature from its moments (module docstring): the
    image share of the activation mass (a fraction in [0, 1]), its interval and class."""
    total = m["a"] + m["b"]
    active = total > 0
    safe = np.where(active, total, 1.0)
    split = np.where(active, m["a"] / safe, np.nan)
    mu, cov = _cov(m)
    t = np.where(active, mu[:, 0] + mu[:, 1], 1.0)
    grad = np.zeros_like(mu)
    grad[:, 0], grad[:, 1] = mu[:, 1] / t**2, -mu[:, 0] / t**2
    half = z_for_level(level) * _delta_sd(grad, cov)
    lo = np.where(active, np.clip(split - half, 0.0, 1.0), np.nan)
    hi = np.where(active, np.clip(split + half, 0.0, 1.0), np.nan)
    sq = m["aa"] - 2.0 * m["ab"] + m["bb"]
    z = np.abs(m["a"] - m["b"]) / np.sqrt(np.where(sq > 0, sq, 1.0))
    pv = np.where(active, np.where(sq > 0, 2.0 * _normal_sf(z), 1.0), np.nan)
    labels = split_labels(split, pv, active, dominance=dominance, alpha=alpha)
    return ModalitySplit(split, lo, hi, pv, labels, dominance, alpha)


def bridge_from_moments(m: PairMomentSums, *, level: float = 0.95) -> BridgeScores:
    """Returns the Bridge Score of each feature from its moments (module docstring); NaN
    where a feature is silent in one modality.

    Raises:
        InputError: fewer than 2 pairs.
    """
    n = m.n
    if n < 2:
        raise InputError(f"the Bridge Score needs at least 2 pairs, got {n}")
    silent = (m["aa"] == 0) | (m["bb"] == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.sqrt(m["aa"] * m["bb"])
        matched = m["ab"] / norm
        mismatched = (m["a"] * m["b"] - m["ab"]) / ((n - 1) * norm)
        bridge = matched - mismatched
        mu, cov = _cov(m)
        c, r = n / (n - 1), 1.0 / np.sqrt(mu[:, 3] * mu[:, 4])
        num = mu[:, 2] - mu[:, 0] * mu[:, 1]
        grad = np.stack(
            [-c * mu[:, 1] * r, -c * mu[:, 0] * r, c * r, -0.5 * c * num * r / mu[:, 3],
             -0.5 * c * num * r / mu[:, 4]],
            axis=1,
        )  # fmt: skip
        half = z_for_level(level) * _delta_sd(np.nan_to_num(grad), cov)
        s_aa = m["aa"] - m["a"] ** 2 / n
        s_bb = m["bb"] - m["b"] ** 2 / n
        sd = np.sqrt(np.maximum(s_aa * s_bb, 0.0) / (n - 1))
        z = (m["ab"] - m["a"] * m["b"] / n) / np.where(sd > 0, sd, np.inf)
        pv = _normal_sf(z)

    def mask(x: Array) -> Array:
        return np.where(silent, np.nan, x)

    return BridgeScores(
        mask(bridge), mask(matched), mask(mismatched), mask(bridge - half), mask(bridge + half),
        mask(pv),
    )  # fmt: skip


@dataclass
class SharedStats:
    """Every per-feature statistic of a shared dictionary over matched pairs."""

    split: ModalitySplit
    bridge: BridgeScores
    image_auroc: Array
    """``[F, C]`` exact AUROC of each feature's image activations for each concept."""
    image_pvalue: Array
    """``[F, C]`` one-sided Mann-Whitney p-values of ``image_auroc``."""
    text_auroc: Array
    """``[F, C]`` the same on caption rows against what the caption says."""
    text_pvalue: Array
    n_pairs: int
    image_se: Array | None = None
    """``[F, C]`` DeLong standard errors of ``image_auroc`` (with ``with_se``)."""
    text_se: Array | None = None

    def invariant(self, thresholds: Any = DEFAULT_THRESHOLDS, **options: Any) -> InvariantCurve:
        """Returns the invariant-feature curve (:func:`~vlmfast.crossmodal.invariant_curve`).

        Raises:
            InputError: a threshold outside [0.5, 1] or a bad option.
        """
        return invariant_curve(
            self.image_auroc, self.image_pvalue, self.text_auroc, self.text_pvalue,
            thresholds=thresholds, **options,
        )  # fmt: skip


def shared_dictionary_stats(
    chunks: Callable[[], Iterable[PairChunk]],
    image_labels: Any,
    text_labels: Any,
    n_features: int,
    *,
    dominance: float = 0.9,
    alpha: float = 0.05,
    level: float = 0.95,
    with_se: bool = False,
) -> SharedStats:
    """Returns the split, Bridge Score and both modalities' AUROCs (in [0, 1]) and
    p-values as :class:`SharedStats`, from one read of ``chunks()``.

    ``chunks()`` yields :data:`PairChunk` s of consecutive matched pairs (read once);
    ``image_labels`` / ``text_labels`` are ``[pairs, C]`` bool, the same concept columns
    (what each image shows, what each caption says). ``with_se``: also compute the
    AUROCs' DeLong standard errors (``image_se``/``text_se``; the invariant curve needs
    only the p-values, and the errors double the scoring time).

    Raises:
        InputError: labels whose row count is not the number of pairs read, or whose
            concept columns differ, and every error of
            :func:`~vlmfast.crossmodal.pair_moments.read_pairs` and
            :func:`~vlmfast.crossmodal.pair_moments.score_shared_pairs`.
    """
    pairs = read_pairs(chunks())
    n = int(pairs[0].shape[0])
    img_lab, txt_lab = (
        np.ascontiguousarray(np.asarray(lab, dtype=bool)) for lab in (image_labels, text_labels)
    )
    for name, lab in (("image_labels", img_lab), ("text_labels", txt_lab)):
        if lab.ndim != 2 or lab.shape[0] != n:
            raise InputError(f"{name} has shape {lab.shape}; expected [{n} pairs, concepts]")
    if img_lab.shape[1] != txt_lab.shape[1]:
        raise InputError(
            f"image_labels has {img_lab.shape[1]} concept columns and text_labels "
            f"{txt_lab.shape[1]}: both must name the same concepts"
        )
    img, txt, moments = score_shared_pairs(pairs, img_lab, txt_lab, n_features, with_se=with_se)
    del pairs
    return SharedStats(
        split=split_from_moments(moments, dominance=dominance, alpha=alpha, level=level),
        bridge=bridge_from_moments(moments, level=level),
        image_auroc=img.auroc,
        image_pvalue=img.pvalues("greater"),
        text_auroc=txt.auroc,
        text_pvalue=txt.pvalues("greater"),
        n_pairs=moments.n,
        image_se=img.se,
        text_se=txt.se,
    )


__all__ = ["SharedStats", "bridge_from_moments", "shared_dictionary_stats", "split_from_moments"]
