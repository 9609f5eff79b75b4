"""Pure numpy references for the native statistics (slow; for tests and small data).

* :func:`auroc_reference`: Mann–Whitney AUROC from midranks over all rows.
* :func:`delong_se_reference`: DeLong standard error from explicit placement values.
* :func:`codes_to_dense`: top-k codes ``(indices, values)`` as a dense ``[N, F]`` matrix.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def midranks(x: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """1-based ranks of ``x`` with ties given their average rank."""
    a = np.asarray(x, dtype=np.float64)
    order = np.argsort(a, kind="mergesort")
    s = a[order]
    # group starts: positions where the sorted value changes
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    ends = np.r_[starts[1:], len(s)]
    avg = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(len(a))
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def auroc_reference(scores: npt.ArrayLike, labels: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """AUROC ``[F, C]`` of every column of ``scores[N, F]`` for every column of ``labels[N, C]``.

    NaN where a concept has no positive or no negative row.
    """
    x = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    if x.ndim == 1:
        x = x[:, None]
    if y.ndim == 1:
        y = y[:, None]
    n, f = x.shape
    out = np.full((f, y.shape[1]), np.nan)
    p = y.sum(0)
    q = n - p
    for j in range(f):
        r = midranks(x[:, j])
        r_pos = r @ y  # rank sum of the positives, per concept
        with np.errstate(invalid="ignore", divide="ignore"):
            out[j] = (r_pos - p * (p + 1) / 2.0) / (p * q)
    out[:, (p == 0) | (q == 0)] = np.nan
    return out


def delong_se_reference(x: npt.ArrayLike, y: npt.ArrayLike) -> float:
    """DeLong (1988) standard error of the AUROC of scores ``x`` for binary labels ``y``.

    A class with a single member contributes no variance term; NaN if a class is empty.
    """
    xs = np.asarray(x, dtype=np.float64)
    ys = np.asarray(y, dtype=bool)
    pos, neg = xs[ys], xs[~ys]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    v10 = psi.mean(1)
    v01 = psi.mean(0)
    s10 = v10.var(ddof=1) if len(pos) > 1 else 0.0
    s01 = v01.var(ddof=1) if len(neg) > 1 else 0.0
    return float(np.sqrt(s10 / len(pos) + s01 / len(neg)))


def codes_to_dense(
    indices: npt.ArrayLike, values: npt.ArrayLike, n_features: int
) -> npt.NDArray[np.float32]:
    """Top-k codes as a dense ``[N, n_features]`` float32 matrix (zeros elsewhere)."""
    idx = np.asarray(indices, dtype=np.int64)
    val = np.asarray(values, dtype=np.float32)
    dense = np.zeros((idx.shape[0], n_features), dtype=np.float32)
    np.put_along_axis(dense, idx, val, axis=1)
    return dense
