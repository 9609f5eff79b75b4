"""Side statistics, streaming, significance and errors of vf.stats."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import vlmfast as vf
from vlmfast.errors import InputError, ShapeError
from vlmfast.stats.reference import codes_to_dense


def _case(seed: int = 0, n: int = 300, f: int = 40, k: int = 5, c: int = 6):
    rng = np.random.default_rng(seed)
    idx = np.argsort(rng.random((n, f)), axis=1)[:, :k]
    vals = np.round(rng.random((n, k)) * 4, 1).astype(np.float32)
    labels = rng.random((n, c)) < np.linspace(0.05, 0.9, c)
    return idx, vals, labels, f


def test_side_tables_match_numpy() -> None:
    idx, vals, labels, f = _case()
    s = vf.stats.score_sparse(idx, vals, labels, f, top_n=7)
    dense = codes_to_dense(idx, vals, f)
    y = labels.astype(np.float64)
    p = y.sum(0)
    assert s.pos_firing is not None and s.mean_pos is not None and s.mean_neg is not None
    np.testing.assert_array_equal(s.n_pos, p)
    np.testing.assert_array_equal(s.firing, (dense > 0).sum(0))
    np.testing.assert_array_equal(s.pos_firing, ((dense > 0).T.astype(np.float64) @ y))
    np.testing.assert_allclose(s.mean_pos, (dense.T @ y) / p, rtol=1e-5)
    np.testing.assert_allclose(s.mean_neg, (dense.T @ (1 - y)) / (len(y) - p), rtol=1e-5)
    for j in range(f):
        col = dense[:, j]
        nz = np.sort(col[col != 0])[::-1][:7]
        np.testing.assert_array_equal(s.top_values[j, : len(nz)], nz)
        rows = s.top_rows[j, : len(nz)]
        np.testing.assert_array_equal(col[rows], nz)
        assert s.precision is not None
        np.testing.assert_allclose(s.precision[j], labels[rows].mean(0), rtol=1e-6)


def test_dense_side_tables_and_ci() -> None:
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(200, 12)).astype(np.float32)
    labels = rng.random((200, 3)) < 0.3
    scores[:, 0] += 3 * labels[:, 0]
    s = vf.stats.score_dense(scores, labels, top_n=10)
    lo, hi = s.ci(0.95)
    assert (lo <= s.auroc).all() and (s.auroc <= hi).all()
    assert s.auroc[0, 0] > 0.9 and lo[0, 0] > 0.8
    order = np.argsort(-scores[:, 3], kind="stable")[:10]
    np.testing.assert_array_equal(np.sort(s.top_values[3]), np.sort(scores[order, 3]))


def test_streaming_equals_in_memory() -> None:
    idx, vals, labels, f = _case(2)
    full = vf.stats.score_sparse(idx, vals, labels, f, top_n=5)
    bounds = [0, 17, 150, 151, 300]
    seen: list[int] = []

    def chunks():
        for a, b in itertools.pairwise(bounds):
            yield idx[a:b], vals[a:b]

    st = vf.stats.score_sparse_chunks(
        chunks, labels, f, feature_block=7, top_n=5, progress=seen.append
    )
    np.testing.assert_array_equal(st.auroc, full.auroc)
    np.testing.assert_array_equal(st.se, full.se)
    np.testing.assert_array_equal(st.top_values, full.top_values)
    np.testing.assert_array_equal(st.top_rows, full.top_rows)
    np.testing.assert_array_equal(st.firing, full.firing)
    assert sum(seen) == 300 * 6  # 6 feature blocks, every chunk read once per block


def test_pvalues_and_bh() -> None:
    rng = np.random.default_rng(3)
    n = 400
    labels = rng.random((n, 2)) < 0.25
    scores = rng.normal(size=(n, 50)).astype(np.float32)
    scores[:, :5] += 2.0 * labels[:, :1]
    s = vf.stats.score_dense(scores, labels)
    p = s.pvalues()
    sig = vf.stats.benjamini_hochberg(p, alpha=0.05)
    assert sig[:5, 0].all()
    assert sig[5:, :].sum() <= 3
    # BH against a direct implementation
    flat = p.ravel()
    m = len(flat)
    order = np.argsort(flat)
    ok = flat[order] <= 0.05 * np.arange(1, m + 1) / m
    kmax = np.flatnonzero(ok).max() + 1 if ok.any() else 0
    want = np.zeros(m, bool)
    want[order[:kmax]] = True
    np.testing.assert_array_equal(sig.ravel(), want)
    q = vf.stats.bh_adjusted(p)
    np.testing.assert_array_equal(q <= 0.05, sig)
    # null: the p-values of a tie-free unit match scipy's normal approximation
    scipy_stats = pytest.importorskip("scipy.stats")
    res = scipy_stats.mannwhitneyu(
        scores[labels[:, 1], 7].astype(np.float64),
        scores[~labels[:, 1], 7].astype(np.float64),
        alternative="greater",
        method="asymptotic",
        use_continuity=False,
    )
    assert abs(res.pvalue - p[7, 1]) < 1e-9


def test_pvalues_with_zero_ties_match_scipy() -> None:
    scipy_stats = pytest.importorskip("scipy.stats")
    idx, vals, labels, f = _case(4)
    s = vf.stats.score_sparse(idx, vals, labels, f)
    dense = codes_to_dense(idx, vals, f)
    p = s.pvalues("two-sided")
    for j in (0, 5, 11):
        y = labels[:, 2]
        res = scipy_stats.mannwhitneyu(
            dense[y, j].astype(np.float64),
            dense[~y, j].astype(np.float64),
            alternative="two-sided",
            method="asymptotic",
            use_continuity=False,
        )
        assert abs(res.pvalue - p[j, 2]) < 1e-9


def test_errors_name_the_input() -> None:
    idx, vals, labels, f = _case()
    with pytest.raises(ShapeError, match="labels has 299 rows"):
        vf.stats.auroc_sparse(idx, vals, labels[:-1], f)
    bad = idx.copy()
    bad[3, 1] = f
    with pytest.raises(InputError, match="outside"):
        vf.stats.auroc_sparse(bad, vals, labels, f)
    nan = vals.copy()
    nan[2, 2] = np.nan
    with pytest.raises(InputError, match="NaN"):
        vf.stats.auroc_sparse(idx, nan, labels, f)
    dup = idx.copy()
    dup[0, 1] = dup[0, 0]
    with pytest.raises(InputError, match="twice"):
        vf.stats.auroc_sparse(dup, vals, labels, f)
    with pytest.raises(ShapeError):
        vf.stats.auroc_sparse(idx, vals[:, :2], labels, f)
    with pytest.raises(InputError, match="0/1"):
        vf.stats.auroc(vals, np.full((300, 2), 2))
    with pytest.raises(InputError, match="NaN"):
        vf.stats.auroc(np.array([[np.nan]]), np.array([[True]]))
