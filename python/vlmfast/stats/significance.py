"""Significance of AUROCs: the Mann–Whitney null test and Benjamini–Hochberg.

The p-value of "unit j ranks concept c's positives above its negatives"
(H1: AUROC > 0.5) uses the normal approximation of U under the null with
the tie correction: ``Var(U) = P·Q/12 · (N + 1 − Σ(t³ − t) / (N(N − 1)))``,
where ``Σ(t³ − t)`` runs over the unit's tie groups (the zeros of a sparse
code are one large group). The normal approximation is accurate for the
class sizes of concept scoring (tens of positives or more); for a handful
of positives it is a rough guide only.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt


def _normal_sf(z: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Upper tail of the standard normal, accurate far into the tail."""
    import torch

    t = torch.from_numpy(np.ascontiguousarray(-z, dtype=np.float64))
    return torch.special.ndtr(t).numpy()


def mann_whitney_pvalues(
    auroc: npt.NDArray[np.float64],
    n_pos: npt.NDArray[np.integer],
    n_rows: int,
    ties: npt.NDArray[np.float64],
    alternative: str = "greater",
) -> npt.NDArray[np.float64]:
    """Returns the one- or two-sided p-values ``float64[F, C]``, in [0, 1], of the
    tie-corrected Mann–Whitney test.

    ``alternative``: ``"greater"`` (AUROC > 0.5), ``"less"`` or ``"two-sided"``.
    NaN where a class is empty; 1.0 where every value is tied (no information).

    Raises:
        InputError: ``alternative`` is none of the three.
    """
    from vlmfast.errors import InputError

    if alternative not in ("greater", "less", "two-sided"):
        raise InputError(
            f"alternative must be 'greater', 'less' or 'two-sided', got {alternative!r}"
        )
    n = float(n_rows)
    p = np.asarray(n_pos, dtype=np.float64)[None, :]
    q = n - p
    tie = np.asarray(ties, dtype=np.float64)[:, None]
    denom = n * (n - 1.0) if n > 1 else 1.0
    var = p * q / 12.0 * ((n + 1.0) - tie / denom)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = (auroc - 0.5) * p * q / np.sqrt(var)
    z = np.where(var > 0, z, 0.0)
    if alternative == "greater":
        pv = _normal_sf(z)
    elif alternative == "less":
        pv = _normal_sf(-z)
    else:
        pv = np.minimum(1.0, 2.0 * _normal_sf(np.abs(z)))
    pv = np.where(var > 0, pv, 1.0)
    return np.where(np.isnan(auroc), np.nan, pv)


def benjamini_hochberg(pvalues: npt.ArrayLike, alpha: float = 0.05) -> npt.NDArray[np.bool_]:
    """Returns the rejections of the Benjamini–Hochberg step-up procedure at FDR ``alpha``.

    Runs over all finite p-values of the array together (one family); NaN
    entries are not tests and are never rejected. Returns a bool array of
    the input's shape.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    flat = p.ravel()
    ok = np.flatnonzero(np.isfinite(flat))
    out = np.zeros(flat.shape, dtype=bool)
    m = len(ok)
    if m == 0:
        return out.reshape(p.shape)
    order = ok[np.argsort(flat[ok], kind="stable")]
    thresh = alpha * np.arange(1, m + 1) / m
    below = np.flatnonzero(flat[order] <= thresh)
    if len(below):
        out[order[: below[-1] + 1]] = True
    return out.reshape(p.shape)


def bh_adjusted(pvalues: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Returns the Benjamini–Hochberg adjusted p-values (q-values, in [0, 1]) of the
    input's shape; NaN stays NaN."""
    p = np.asarray(pvalues, dtype=np.float64)
    flat = p.ravel()
    ok = np.flatnonzero(np.isfinite(flat))
    out = np.full(flat.shape, np.nan)
    m = len(ok)
    if m:
        order = ok[np.argsort(flat[ok], kind="stable")]
        scaled = flat[order] * m / np.arange(1, m + 1)
        out[order] = np.minimum(1.0, np.minimum.accumulate(scaled[::-1])[::-1])
    return out.reshape(p.shape)


def z_for_level(level: float) -> float:
    """Two-sided normal quantile for a confidence ``level`` (0.95 -> 1.95996...)."""
    from statistics import NormalDist

    if not 0.0 < level < 1.0:
        from vlmfast.errors import InputError

        raise InputError(f"confidence level must be in (0, 1), got {level}")
    return NormalDist().inv_cdf(0.5 + level / 2.0) if math.isfinite(level) else float("nan")
