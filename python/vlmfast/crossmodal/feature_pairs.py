"""Per-feature statistics over matched pairs: the modality split and the Bridge Score.

Inputs are nonnegative feature activations of matched pairs: ``a = image_acts[n, F]``
and ``b = text_acts[n, F]``, where row i of each comes from the same image-caption
pair (e.g. the codes of one SAE trained on the rows of both modalities).

**Modality split** of feature f: ``s_f = Σ_i a_if / (Σ_i a_if + Σ_i b_if)``, the share
of its activation mass on image rows (NaN for a feature that never fires:
``"inactive"``). Interval: percentile bootstrap over pairs (Poisson weights,
streamed in row chunks of :data:`CHUNK_ROWS`). Null: within each pair the
modality labels are swapped with probability ½, which keeps each pair's
activations and breaks only which side they sit on. Under it the image mass has
mean ``Σ(a+b)/2`` and variance ``Σ(a−b)²/4``, so the two-sided p-value of
``|s − ½|`` is the normal approximation of this sign-flip test,
``z = Σ(a−b) / sqrt(Σ(a−b)²)`` (exact moments; approximate when a handful of
pairs carry the mass; it reaches any small p, so BH works over many features;
1.0 when every pair has equal mass on both sides). Classes (BH over active features at
``alpha``): ``"image-only"`` when significant and ``s ≥ dominance``; ``"text-only"``
when significant and ``s ≤ 1 − dominance``; ``"undecided"`` when beyond the
dominance cut but not significant (too few activations to tell); otherwise
``"bimodal"`` (mass on both sides, possibly with a lean).

**Bridge Score** (after Papadimitriou et al. 2025, arXiv 2504.11695, who score
feature pairs by co-activation across matched image-caption pairs weighted by
decoder similarity; here the same feature on both sides, so the decoder term is
1). With ``rms_a = sqrt(mean_i a_i²)`` and ``rms_b`` likewise::

    matched    = mean_i a_i b_i / (rms_a · rms_b)
    mismatched = mean_{i≠j} a_i b_j / (rms_a · rms_b)
    bridge     = matched − mismatched

``matched`` is the cosine of the feature's image and text activation vectors
over the pairs (in [0, 1]); ``mismatched`` is its expectation when captions are
paired with other images. A feature that fires on an image *and* its caption has
a bridge near its matched cosine; a feature that fires in both modalities but on
unrelated pairs, near 0. NaN (undefined, reason "silent in one modality") when
the feature never fires on one side. Interval: percentile bootstrap over pairs
(Poisson weights, streamed in row chunks; a resampled pair's copies are not
counted as mismatched). Null: ``n_null`` random
re-pairings of the caption rows; p-value ``(1 + #{null matched ≥ matched}) / (1 + n_null)``.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from vlmfast.crossmodal.checks import to_jsonable
from vlmfast.stats import benjamini_hochberg

Array = npt.NDArray[np.float64]


@dataclass
class ModalitySplit:
    """Per-feature share of activation mass on image rows, its interval, null and class."""

    split: Array
    """``[F]`` image share of the activation mass; NaN for inactive features."""
    ci_low: Array
    """``[F]`` bootstrap lower end."""
    ci_high: Array
    """``[F]`` bootstrap upper end."""
    pvalue: Array
    """``[F]`` two-sided p-value of ``|split − ½|`` under the within-pair swap null
    (normal approximation of the sign-flip test)."""
    label: list[str]
    """``[F]`` ``image-only`` / ``text-only`` / ``bimodal`` / ``undecided`` / ``inactive``."""
    dominance: float
    alpha: float

    def counts(self) -> dict[str, int]:
        """Returns the number of features per class."""
        names = ("image-only", "text-only", "bimodal", "undecided", "inactive")
        return {k: self.label.count(k) for k in names}

    def to_dict(self) -> dict[str, Any]:
        """Returns a JSON-ready dict (NaN becomes ``None``) with the class counts."""
        return {**{k: to_jsonable(v) for k, v in self.__dict__.items()}, "counts": self.counts()}


@dataclass
class BridgeScores:
    """Per-feature Bridge Score (matched minus mismatched co-activation) with interval and null."""

    bridge: Array
    """``[F]`` matched − mismatched normalised co-activation; NaN if silent on a side."""
    matched: Array
    """``[F]`` cosine of image and text activations over matched pairs."""
    mismatched: Array
    """``[F]`` the same over all mismatched pairings (exact expectation)."""
    ci_low: Array
    """``[F]`` bootstrap lower end of ``bridge``."""
    ci_high: Array
    """``[F]`` bootstrap upper end of ``bridge``."""
    pvalue: Array
    """``[F]`` p-value of ``matched`` under random re-pairing of captions."""

    def to_dict(self) -> dict[str, Any]:
        """Returns a JSON-ready dict (NaN becomes ``None``)."""
        return {k: to_jsonable(v) for k, v in self.__dict__.items()}


CHUNK_ROWS = 4096
"""Pairs per chunk of the streamed bootstrap and null (bounds memory to ``B × chunk``)."""


def pair_sums(
    a: Array,
    b: Array,
    weights: Array | None = None,
    *,
    products: bool = True,
) -> dict[str, Array]:
    """Weighted sums over pairs ``[B, F]`` (``[B, 1]`` for ``w``, ``w2``) of one chunk.

    Keys: ``a``, ``b`` (activation mass), and with ``products``: ``ab``, ``aa``,
    ``bb``, ``ab_w2`` (``Σ w² a b``, the same-pair terms), ``w``, ``w2``.
    ``weights[B, n]`` defaults to one replicate of unit weights (the sample itself).
    """
    w = np.ones((1, a.shape[0])) if weights is None else weights
    out = {"a": w @ a, "b": w @ b}
    if products:
        ab, w2 = a * b, w * w
        out.update(
            ab=w @ ab,
            aa=w @ (a * a),
            bb=w @ (b * b),
            ab_w2=w2 @ ab,
            w=w.sum(1, keepdims=True),
            w2=w2.sum(1, keepdims=True),
        )
    return out


def bootstrap_sums(
    a: Array,
    b: Array,
    n_boot: int,
    rng: np.random.Generator,
    *,
    products: bool = True,
    chunk_rows: int = CHUNK_ROWS,
) -> dict[str, Array]:
    """:func:`pair_sums` under ``n_boot`` Poisson(1) bootstrap replicates, streamed in chunks."""
    total: dict[str, Array] = {}
    for s in range(0, a.shape[0], chunk_rows):
        ca, cb = a[s : s + chunk_rows], b[s : s + chunk_rows]
        w = rng.poisson(1.0, (n_boot, ca.shape[0])).astype(np.float64)
        for k, v in pair_sums(ca, cb, w, products=products).items():
            total[k] = total[k] + v if k in total else v
    return total


def sign_flip_pvalue(a: Array, b: Array) -> Array:
    """Two-sided p ``[F]`` of ``Σ(a − b) = 0`` under within-pair swaps (normal approximation)."""
    diff = a - b
    sq = np.zeros(a.shape[1])
    tot = np.zeros(a.shape[1])
    for s in range(0, a.shape[0], CHUNK_ROWS):
        d = diff[s : s + CHUNK_ROWS]
        tot += d.sum(0)
        sq += (d * d).sum(0)
    z = np.abs(tot) / np.sqrt(np.where(sq > 0, sq, 1.0))
    erfc = np.frompyfunc(math.erfc, 1, 1)
    p = np.asarray(erfc(z / math.sqrt(2.0)), dtype=np.float64)
    return np.where(sq > 0, p, 1.0)


def _interval(samples: Array, level: float) -> tuple[Array, Array]:
    """Percentile interval ``(low, high)`` per column of ``samples[B, F]``; NaN columns stay NaN."""
    q = (1.0 - level) / 2.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: silent features
        lo = np.nanquantile(samples, q, axis=0)
        hi = np.nanquantile(samples, 1.0 - q, axis=0)
    return lo, hi


def split_labels(
    split: Array, pvalue: Array, active: Any, *, dominance: float, alpha: float
) -> list[str]:
    """Each feature's class from its split and swap-null p-value (BH over active features
    at ``alpha``): image-only / text-only beyond ``dominance`` when significant,
    ``undecided`` there when not, otherwise ``bimodal``; ``inactive`` if it never fires."""
    sig = benjamini_hochberg(pvalue, alpha)
    labels = []
    for f, s in enumerate(split):
        if not active[f]:
            labels.append("inactive")
        elif s >= dominance or s <= 1.0 - dominance:
            side = "image-only" if s >= dominance else "text-only"
            labels.append(side if sig[f] else "undecided")
        else:
            labels.append("bimodal")
    return labels


def modality_split(
    image_acts: Array,
    text_acts: Array,
    *,
    dominance: float = 0.9,
    alpha: float = 0.05,
    n_boot: int = 200,
    level: float = 0.95,
    seed: int = 0,
) -> ModalitySplit:
    """Returns the modality split of each feature (module docstring): image share of the
    activation mass (a fraction in [0, 1]), its interval, swap null and class.

    ``image_acts`` / ``text_acts`` are nonnegative ``[n, F]`` arrays of matched pairs
    (validated by the caller, e.g. :func:`~vlmfast.crossmodal.analyze_shared_dictionary`).
    """
    rng = np.random.default_rng(seed)
    a, b = image_acts, text_acts
    total = a.sum(0) + b.sum(0)
    active = total > 0
    safe = np.where(active, total, 1.0)
    split = np.where(active, a.sum(0) / safe, np.nan)
    sums = bootstrap_sums(a, b, n_boot, rng, products=False)
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = sums["a"] / (sums["a"] + sums["b"])
    lo, hi = _interval(boot, level)
    pv = np.where(active, sign_flip_pvalue(a, b), np.nan)
    labels = split_labels(split, pv, active, dominance=dominance, alpha=alpha)
    lo, hi = np.where(active, lo, np.nan), np.where(active, hi, np.nan)
    return ModalitySplit(split, lo, hi, pv, labels, dominance, alpha)


def _cosines(s: dict[str, Array]) -> tuple[Array, Array]:
    """Matched and mismatched cosines ``[B, F]`` from :func:`pair_sums`-style sums."""
    n = s["w"]
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.sqrt(s["aa"] * s["bb"]) / n
        matched = s["ab"] / n / norm
        mismatched = (s["a"] * s["b"] - s["ab_w2"]) / (n * n - s["w2"]) / norm
    return matched, mismatched


def bridge_scores(
    image_acts: Array,
    text_acts: Array,
    *,
    n_boot: int = 200,
    n_null: int = 200,
    level: float = 0.95,
    seed: int = 0,
) -> BridgeScores:
    """Returns the Bridge Score of each feature (module docstring; a cosine difference in
    [-2, 2]) with bootstrap interval and re-pairing null."""
    rng = np.random.default_rng(seed)
    a, b = image_acts, text_acts
    n = a.shape[0]
    silent = ((a * a).sum(0) == 0) | ((b * b).sum(0) == 0)
    m, u = _cosines(pair_sums(a, b))
    matched, mismatched = m[0], u[0]
    bridge = matched - mismatched
    bm, bu = _cosines(bootstrap_sums(a, b, n_boot, rng))
    lo, hi = _interval(bm - bu, level)
    rms = np.sqrt((a * a).mean(0) * (b * b).mean(0))
    exceed = np.zeros(a.shape[1])
    with np.errstate(invalid="ignore", divide="ignore"):
        for _ in range(n_null):
            null = (a * b[rng.permutation(n)]).mean(0) / rms
            exceed += null >= matched - 1e-12
    pv = (1.0 + exceed) / (1.0 + n_null)

    def mask(x: Array) -> Array:
        return np.where(silent, np.nan, x)

    return BridgeScores(mask(bridge), mask(matched), mask(mismatched), mask(lo), mask(hi), mask(pv))
