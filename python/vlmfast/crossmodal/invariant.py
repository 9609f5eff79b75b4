"""Invariant concept features: selective for the same concept in both modalities.

From per-feature, per-concept AUROCs on image rows and on caption rows (each with
its one-sided Mann–Whitney p-value, :mod:`vlmfast.stats.significance`):

* one Benjamini–Hochberg family holds the p-values of **both** modalities
  (``2 · F · C`` tests) at ``alpha``;
* at an AUROC threshold ``t``, feature f is *selective for c on images* when
  ``AUROC_img[f, c] ≥ t`` and its image test is rejected; likewise on captions;
* f is *invariant* when it is selective for the same concept on both sides;
* the **invariant fraction** at ``t`` is ``#invariant / #selective in either
  modality`` (features, not feature × concept cells). The denominator can be 0:
  then the fraction is undefined (``None`` with a reason), never 0%.

The fraction is reported as a curve over thresholds (not one cut). Each point
has a Wilson interval (features as the sample) and a **feature-permutation
null**: the text-side selectivity rows are shuffled over features (``n_perm``
times), pairing each feature's image selectivity with a random feature's
caption selectivity, which keeps both modalities' selective counts and breaks
only whether the two sides sit in the same feature; ``null_mean``, ``null_q95``
and the p-value ``(1 + #{null ≥ observed}) / (1 + n_perm)`` over the same
denominator.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from vlmfast.crossmodal.checks import to_jsonable
from vlmfast.errors import InputError, ShapeError
from vlmfast.stats import benjamini_hochberg
from vlmfast.stats.significance import z_for_level

DEFAULT_THRESHOLDS = (0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


@dataclass
class InvariantPoint:
    """The invariant fraction at one AUROC threshold."""

    threshold: float
    n_invariant: int
    """Features selective for the same concept on images and on captions."""
    n_selective_either: int
    """The denominator: features selective for some concept in either modality."""
    n_selective_image: int
    n_selective_text: int
    fraction: float | None
    """``n_invariant / n_selective_either``; ``None`` when the denominator is 0."""
    ci_low: float | None
    """Wilson interval of ``fraction`` (``None`` when undefined)."""
    ci_high: float | None
    null_mean: float | None
    """Mean fraction under the feature-permutation null."""
    null_q95: float | None
    pvalue: float | None
    """``(1 + #{null ≥ observed}) / (1 + n_perm)``."""
    reason: str = ""
    """Why ``fraction`` is undefined, else empty."""

    def to_dict(self) -> dict[str, Any]:
        """Returns a JSON-ready dict (NaN becomes ``None``)."""
        return {k: to_jsonable(v) for k, v in self.__dict__.items()}


@dataclass
class InvariantCurve:
    """Invariant fraction over AUROC thresholds, plus the invariant (feature, concept) cells."""

    points: list[InvariantPoint]
    alpha: float
    n_perm: int
    level: float
    invariant_cells: dict[float, list[tuple[int, int]]] = field(default_factory=dict)
    """Threshold -> ``(feature, concept)`` pairs selective on both sides."""

    def at(self, threshold: float) -> InvariantPoint:
        """Returns the point at ``threshold``.

        Raises:
            InputError: ``threshold`` was not computed.
        """
        for p in self.points:
            if abs(p.threshold - threshold) < 1e-9:
                return p
        raise InputError(
            f"threshold {threshold} not on the curve {[p.threshold for p in self.points]}"
        )

    def to_dict(self) -> dict[str, Any]:
        """Returns a JSON-ready dict; cell keys become strings."""
        return {
            "points": [p.to_dict() for p in self.points],
            "alpha": self.alpha,
            "n_perm": self.n_perm,
            "level": self.level,
            "invariant_cells": {
                str(t): [list(c) for c in v] for t, v in self.invariant_cells.items()
            },
        }


def _wilson(k: int, n: int, level: float) -> tuple[float, float]:
    z = z_for_level(level)
    p = k / n
    den = 1.0 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, float(mid - half)), min(1.0, float(mid + half))


def _point(
    sel_img: npt.NDArray[np.bool_],
    sel_txt: npt.NDArray[np.bool_],
    threshold: float,
    perms: npt.NDArray[np.int64],
    level: float,
) -> InvariantPoint:
    """One curve point from the ``[F, C]`` selectivity masks at ``threshold``."""
    either = sel_img.any(1) | sel_txt.any(1)
    inv = (sel_img & sel_txt).any(1)
    n_inv, den = int(inv.sum()), int(either.sum())
    counts = (n_inv, den, int(sel_img.any(1).sum()), int(sel_txt.any(1).sum()))
    if den == 0:
        reason = "no feature is selective in either modality at this threshold"
        return InvariantPoint(threshold, *counts, None, None, None, None, None, None, reason)
    null = np.array([(sel_img & sel_txt[p]).any(1).sum() / den for p in perms])
    frac = n_inv / den
    lo, hi = _wilson(n_inv, den, level)
    pv = (1.0 + float((null >= frac - 1e-12).sum())) / (1.0 + len(null)) if len(null) else None
    return InvariantPoint(
        threshold,
        *counts,
        frac,
        lo,
        hi,
        float(null.mean()) if len(null) else None,
        float(np.quantile(null, 0.95)) if len(null) else None,
        pv,
    )


def invariant_curve(
    image_auroc: Any,
    image_pvalue: Any,
    text_auroc: Any,
    text_pvalue: Any,
    *,
    thresholds: Any = DEFAULT_THRESHOLDS,
    alpha: float = 0.05,
    n_perm: int = 200,
    level: float = 0.95,
    seed: int = 0,
) -> InvariantCurve:
    """Returns the invariant-feature fraction (in [0, 1], with its interval and null) over
    AUROC ``thresholds`` (see the module docstring).

    All four tables are ``[F, C]`` (features x concepts, same concept columns);
    NaN AUROCs/p-values (a concept without positives on one side) are not tests.

    Raises:
        ShapeError: the four tables do not share one ``[F, C]`` shape.
        InputError: a threshold outside [0.5, 1], ``n_perm < 0``.
    """
    tabs = [
        np.asarray(t, dtype=np.float64)
        for t in (image_auroc, image_pvalue, text_auroc, text_pvalue)
    ]
    shapes = {t.shape for t in tabs}
    if len(shapes) != 1 or tabs[0].ndim != 2:
        raise ShapeError(
            "image_auroc, image_pvalue, text_auroc, text_pvalue must share one [features, "
            f"concepts] shape, got {[t.shape for t in tabs]}"
        )
    ts = [float(t) for t in np.atleast_1d(np.asarray(thresholds, dtype=np.float64))]
    if not ts or any(not 0.5 <= t <= 1.0 for t in ts):
        raise InputError(f"thresholds must be non-empty and within [0.5, 1], got {ts}")
    if n_perm < 0:
        raise InputError(f"n_perm must be >= 0, got {n_perm}")
    a_img, p_img, a_txt, p_txt = tabs
    rejected = benjamini_hochberg(np.stack([p_img, p_txt]), alpha)
    rng = np.random.default_rng(seed)
    n_f = a_img.shape[0]
    perms = np.array([rng.permutation(n_f) for _ in range(n_perm)], dtype=np.int64)
    points, cells = [], {}
    for t in sorted(ts):
        sel_img = rejected[0] & (np.nan_to_num(a_img, nan=0.0) >= t)
        sel_txt = rejected[1] & (np.nan_to_num(a_txt, nan=0.0) >= t)
        points.append(_point(sel_img, sel_txt, t, perms.reshape(n_perm, n_f), level))
        cells[t] = [(int(f), int(c)) for f, c in np.argwhere(sel_img & sel_txt)]
    return InvariantCurve(points, alpha, n_perm, level, cells)
