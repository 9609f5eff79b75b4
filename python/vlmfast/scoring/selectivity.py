"""Selective units: high AUROC *and* significant after Benjamini–Hochberg.

A unit (SAE feature or neuron) is *selective* for concept c in one modality when

* its AUROC for c is at least ``threshold`` (default 0.9), and
* the one-sided Mann–Whitney test of AUROC > 0.5 (tie-corrected normal
  approximation) is rejected by Benjamini–Hochberg at FDR ``alpha`` over
  **all** (unit, concept) tests of that modality.

Counts of selective units come with an interval from the DeLong confidence
intervals of each AUROC: the lower end counts the significant units whose
lower CI bound clears the threshold, the upper end those whose upper bound
does. Percentages carry Wilson score intervals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from vlmfast.errors import InputError
from vlmfast.stats import UnitScores, benjamini_hochberg
from vlmfast.stats.significance import z_for_level


@dataclass(frozen=True)
class SelectivityConfig:
    """Definition of a selective unit.

    Raises:
        InputError: ``threshold`` is outside [0.5, 1] or ``alpha`` outside (0, 1).
    """

    threshold: float = 0.9
    """Minimum AUROC."""
    alpha: float = 0.05
    """Benjamini–Hochberg false discovery rate over all (unit, concept) tests."""
    level: float = 0.95
    """Confidence level of the AUROC intervals and of the count/percentage intervals."""
    min_positives: int = 1
    """Concepts with fewer positive rows are not tested."""

    def __post_init__(self) -> None:
        if not 0.5 <= self.threshold <= 1.0:
            raise InputError(f"threshold must be in [0.5, 1], got {self.threshold}")
        if not 0.0 < self.alpha < 1.0:
            raise InputError(f"alpha must be in (0, 1), got {self.alpha}")


@dataclass
class Selectivity:
    """Selective (unit, concept) pairs of one modality."""

    selective: npt.NDArray[np.bool_]
    """``[units, concepts]``: AUROC ≥ threshold and BH-significant."""
    sure: npt.NDArray[np.bool_]
    """Selective and the CI lower bound ≥ threshold (lower end of count intervals)."""
    possible: npt.NDArray[np.bool_]
    """Significant and the CI upper bound ≥ threshold (upper end of count intervals)."""
    pvalues: npt.NDArray[np.float64]
    """One-sided Mann–Whitney p-values."""
    significant: npt.NDArray[np.bool_]
    """BH rejections."""


def select(scores: UnitScores, cfg: SelectivityConfig | None = None) -> Selectivity:
    """Applies the definition above to one modality's scores.

    Returns:
        The selective, sure and possible ``bool[units, concepts]`` masks, the one-sided
            p-values (in [0, 1]) and the BH rejections, as :class:`Selectivity`.
    """
    cfg = cfg or SelectivityConfig()
    p = scores.pvalues("greater")
    tested = scores.n_pos >= cfg.min_positives
    p = np.where(tested[None, :], p, np.nan)
    sig = benjamini_hochberg(p, cfg.alpha)
    with np.errstate(invalid="ignore"):
        selective = sig & (scores.auroc >= cfg.threshold)
        if scores.se is not None:
            lo, hi = scores.ci(cfg.level)
            sure = selective & (lo >= cfg.threshold)
            possible = sig & (hi >= cfg.threshold)
        else:
            sure = possible = selective
    return Selectivity(selective, sure, possible, p, sig)


def wilson_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Returns the Wilson score interval ``(low, high)`` of a proportion ``k / n``, as
    fractions in [0, 1] (NaNs when ``n == 0``)."""
    if n == 0:
        return (math.nan, math.nan)
    z = z_for_level(level)
    phat = k / n
    den = 1 + z * z / n
    mid = (phat + z * z / (2 * n)) / den
    half = z * math.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / den
    return (max(0.0, mid - half), min(1.0, mid + half))


def count_interval(sel: Selectivity, cols: npt.NDArray[np.bool_]) -> dict[str, int]:
    """Returns the number of units selective for at least one concept among ``cols``, with
    its interval: ``{"count", "low", "high"}`` in units."""
    return {
        "count": int(sel.selective[:, cols].any(1).sum()),
        "low": int(sel.sure[:, cols].any(1).sum()),
        "high": int(sel.possible[:, cols].any(1).sum()),
    }
