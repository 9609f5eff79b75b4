"""vf.stats vs sklearn and the numpy reference: exact to 1e-12 on tie-heavy random cases."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

import vlmfast as vf
from vlmfast.stats.reference import auroc_reference, codes_to_dense, delong_se_reference


def _sklearn_table(dense: np.ndarray, labels: np.ndarray) -> np.ndarray:
    out = np.full((dense.shape[1], labels.shape[1]), np.nan)
    for c in range(labels.shape[1]):
        y = labels[:, c]
        if 0 < y.sum() < len(y):
            for j in range(dense.shape[1]):
                out[j, c] = roc_auc_score(y, dense[:, j])
    return out


@st.composite
def sparse_case(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    n = draw(st.integers(1, 40))
    f = draw(st.integers(1, 10))
    k = draw(st.integers(1, f))
    c = draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    idx = np.argsort(rng.random((n, f)), axis=1)[:, :k]
    levels = draw(st.sampled_from([2, 3, 8, 1000]))
    vals = rng.integers(0, levels, size=(n, k)).astype(np.float32) * 0.25  # zeros and ties
    if draw(st.booleans()):
        vals[:, :] = vals[:1, :]  # duplicated rows
    rate = draw(st.sampled_from([0.02, 0.2, 0.5, 0.9]))
    labels = rng.random((n, c)) < rate
    if draw(st.booleans()):
        labels[:, 0] = False
        labels[rng.integers(n), 0] = True  # a single positive
    return idx, vals, labels, f


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sparse_case())
def test_auroc_sparse_matches_sklearn(case: tuple[np.ndarray, np.ndarray, np.ndarray, int]) -> None:
    idx, vals, labels, f = case
    got = vf.stats.auroc_sparse(idx, vals, labels, f)
    dense = codes_to_dense(idx, vals, f)
    want = _sklearn_table(dense, labels)
    assert got.shape == (f, labels.shape[1]) and got.dtype == np.float64
    np.testing.assert_allclose(got, want, atol=1e-12, rtol=0, equal_nan=True)
    np.testing.assert_allclose(got, auroc_reference(dense, labels), atol=1e-12, equal_nan=True)


@settings(max_examples=150, deadline=None)
@given(
    n=st.integers(1, 40),
    f=st.integers(1, 20),
    c=st.integers(1, 4),
    levels=st.sampled_from([1, 2, 5, 10**6]),
    seed=st.integers(0, 2**32 - 1),
)
def test_auroc_dense_matches_sklearn(n: int, f: int, c: int, levels: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    scores = (rng.integers(0, levels, size=(n, f)) - levels // 2).astype(np.float32)
    labels = rng.random((n, c)) < rng.random(c)
    got = vf.stats.auroc(scores, labels)
    np.testing.assert_allclose(got, _sklearn_table(scores, labels), atol=1e-12, equal_nan=True)


@settings(max_examples=60, deadline=None)
@given(sparse_case())
def test_delong_se_matches_reference(case: tuple[np.ndarray, np.ndarray, np.ndarray, int]) -> None:
    idx, vals, labels, f = case
    s = vf.stats.score_sparse(idx, vals, labels, f, with_se=True)
    dense = codes_to_dense(idx, vals, f)
    assert s.se is not None
    for j in range(f):
        for c in range(labels.shape[1]):
            want = delong_se_reference(dense[:, j], labels[:, c])
            got = s.se[j, c]
            assert (np.isnan(want) and np.isnan(got)) or abs(got - want) < 1e-9


def test_never_firing_feature_is_half_and_empty_class_is_nan() -> None:
    idx = np.array([[0], [0], [1], [0]])
    vals = np.array([[1.0], [2.0], [0.5], [0.0]], dtype=np.float32)
    labels = np.array([[1, 0, 1], [0, 0, 1], [1, 0, 1], [0, 0, 1]], dtype=bool)
    a = vf.stats.auroc_sparse(idx, vals, labels, 4)
    assert a[2, 0] == 0.5 and a[3, 0] == 0.5
    assert np.isnan(a[:, 1]).all() and np.isnan(a[:, 2]).all()  # no positives / no negatives
    s = vf.stats.score_sparse(idx, vals, labels, 4)
    assert s.empty_class.tolist() == [False, True, True]


def test_large_values_keep_their_order() -> None:
    # torchmetrics squashes inputs outside [0, 1] with a sigmoid, tying large values
    vals = np.array([[30.0], [40.0], [50.0], [60.0]], dtype=np.float32)
    idx = np.zeros((4, 1), dtype=np.int64)
    labels = np.array([[0], [0], [1], [1]], dtype=bool)
    assert vf.stats.auroc_sparse(idx, vals, labels, 1)[0, 0] == 1.0


def test_index_dtypes_and_torch_inputs_agree() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    idx = np.argsort(rng.random((50, 30)), axis=1)[:, :4]
    vals = rng.random((50, 4)).astype(np.float32)
    labels = rng.random((50, 3)) < 0.3
    base = vf.stats.auroc_sparse(idx, vals, labels, 30)
    for dt in (np.int32, np.uint32, np.int16, np.uint16, np.uint8):
        np.testing.assert_array_equal(vf.stats.auroc_sparse(idx.astype(dt), vals, labels, 30), base)
    t = vf.stats.auroc_sparse(
        torch.from_numpy(idx), torch.from_numpy(vals), torch.from_numpy(labels), 30
    )
    np.testing.assert_array_equal(t, base)


def test_long_columns_match_sklearn() -> None:
    # > 2048 values per unit: the radix-sort path of both entry points
    rng = np.random.default_rng(7)
    n, f = 6000, 3
    scores = np.round(rng.normal(size=(n, f)), 2).astype(np.float32)
    labels = rng.random((n, 2)) < 0.3
    np.testing.assert_allclose(
        vf.stats.auroc(scores, labels), _sklearn_table(scores, labels), atol=1e-12
    )
    idx = np.tile(np.arange(f), (n, 1))
    vals = np.abs(scores)
    vals[rng.random((n, f)) < 0.2] = 0.0
    got = vf.stats.auroc_sparse(idx, vals, labels, f)
    np.testing.assert_allclose(got, _sklearn_table(vals, labels), atol=1e-12)
