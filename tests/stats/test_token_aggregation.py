"""Token aggregation (per-sample max / mean over token rows) vs numpy + the exact scorers + sklearn."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

import vlmfast as vf
from vlmfast.errors import InputError, ShapeError
from vlmfast.stats.reference import codes_to_dense
from vlmfast.stats.scores import UnitScores


def make_tokens(
    seed: int, n_samples: int, f: int, k: int, *, max_rows: int = 300, neg: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ragged samples (1 to ``max_rows`` token rows, most short), distinct features per
    row, quantised values (ties, zeros), sample ids distinct but not sorted."""
    rng = np.random.default_rng(seed)
    rows = np.where(rng.random(n_samples) < 0.1, rng.integers(1, max_rows + 1, n_samples), 0)
    rows = np.maximum(rows, rng.integers(1, 6, n_samples))
    rows[0] = max_rows
    ids = np.repeat(rng.permutation(10 * n_samples)[:n_samples] - 3 * n_samples, rows)
    n = int(rows.sum())
    idx = np.argsort(rng.random((n, f)), axis=1)[:, :k].astype(np.int32)
    vals = rng.integers(0, 5, size=(n, k)).astype(np.float32) * 0.5
    if neg:
        vals[rng.random((n, k)) < 0.3] *= -1
    return ids.astype(np.int64), idx, vals


def run_starts(ids: np.ndarray) -> np.ndarray:
    return np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])


def numpy_aggregate(x: np.ndarray, ids: np.ndarray, mode: str) -> np.ndarray:
    """The reference: reduce the (dense) token rows over each sample's run."""
    starts = run_starts(ids)
    if mode == "max":
        return np.maximum.reduceat(x, starts, axis=0).astype(np.float32)
    counts = np.diff(np.r_[starts, len(ids)])
    return (np.add.reduceat(x.astype(np.float64), starts, axis=0) / counts[:, None]).astype(
        np.float32
    )


def chunked(
    ids: np.ndarray, *arrays: np.ndarray, seed: int = 0, n_cuts: int = 6
) -> list[tuple[np.ndarray, ...]]:
    """Cuts at random rows (samples split across chunks), plus empty chunks."""
    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.integers(0, len(ids) + 1, n_cuts))
    bounds = [0, *cuts.tolist(), len(ids)]
    out = []
    for lo, hi in itertools.pairwise(bounds):
        out.append((ids[lo:hi], *(a[lo:hi] for a in arrays)))
    return out


def assert_same_scores(got: UnitScores, want: UnitScores) -> None:
    for name in (
        "auroc",
        "se",
        "firing",
        "ties",
        "pos_firing",
        "mean_pos",
        "mean_neg",
        "precision",
        "top_rows",
        "top_values",
        "n_pos",
    ):
        a, b = getattr(got, name), getattr(want, name)
        if a is None or b is None:
            assert a is None and b is None, name
            continue
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert got.n_rows == want.n_rows


def dense_as_codes(dense: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A dense matrix as k = F codes (every feature listed; zeros are the zero group)."""
    n, f = dense.shape
    return np.tile(np.arange(f, dtype=np.int32), (n, 1)), dense


@pytest.mark.parametrize("mode", ["max", "mean"])
@pytest.mark.parametrize("neg", [False, True])
def test_aggregate_sparse_tokens_matches_numpy(mode: str, neg: bool) -> None:
    ids, idx, vals = make_tokens(1, 60, 24, 5, neg=neg)
    rows = vf.stats.aggregate_sparse_tokens(ids, idx, vals, 24, mode)
    want = numpy_aggregate(codes_to_dense(idx, vals, 24), ids, mode)
    np.testing.assert_array_equal(rows.samples, ids[run_starts(ids)])
    np.testing.assert_array_equal(rows.to_dense(), want)
    assert rows.indices.dtype == np.int32 and rows.indptr.dtype == np.int64
    assert (rows.values != 0).all() and rows.nnz == int((want != 0).sum())
    for s in range(rows.n_samples):  # features ascending within a sample
        assert (np.diff(rows.indices[rows.indptr[s] : rows.indptr[s + 1]]) > 0).all()
    if not neg and mode == "max":
        assert rows.values.min() > 0


@pytest.mark.parametrize("mode", ["max", "mean"])
def test_aggregate_dense_tokens_matches_numpy(mode: str) -> None:
    ids, _, _ = make_tokens(2, 40, 4, 1)
    rng = np.random.default_rng(3)
    x = (rng.integers(-3, 4, size=(len(ids), 7)) * 0.25).astype(np.float32)
    samples, agg = vf.stats.aggregate_dense_tokens(ids, x, mode)
    np.testing.assert_array_equal(samples, ids[run_starts(ids)])
    np.testing.assert_array_equal(agg, numpy_aggregate(x, ids, mode))
    assert agg.dtype == np.float32 and agg.shape == (len(samples), 7)


@pytest.mark.parametrize("mode", ["max", "mean"])
@pytest.mark.parametrize("feature_block", [None, 1, 3, 7, 30])
def test_sparse_token_chunks_equal_numpy_then_score_sparse(
    mode: str, feature_block: int | None
) -> None:
    f = 30  # features 24..29 never fire: all-zero features
    ids, idx, vals = make_tokens(4, 80, 24, 4)
    dense = numpy_aggregate(codes_to_dense(idx, vals, f), ids, mode)
    rng = np.random.default_rng(5)
    labels = rng.random((dense.shape[0], 4)) < np.array([0.1, 0.3, 0.6, 0.0])
    parts = chunked(ids, idx, vals, seed=6)
    got = vf.stats.score_sparse_token_chunks(
        lambda: iter(parts), labels, f, mode=mode, feature_block=feature_block, top_n=5
    )
    want = vf.stats.score_sparse(*dense_as_codes(dense), labels, f, top_n=5)
    assert_same_scores(got, want)
    assert got.auroc.shape == (f, 4) and np.isnan(got.auroc[:, 3]).all()
    np.testing.assert_array_equal(got.auroc[24:, :3], 0.5)
    for j in (0, 5, 17):
        for c in range(3):
            assert got.auroc[j, c] == pytest.approx(
                roc_auc_score(labels[:, c], dense[:, j]), abs=1e-12
            )
    assert got.top_rows.max() < dense.shape[0]  # rows index samples


def test_memory_budget_splits_into_passes_with_identical_results() -> None:
    ids, idx, vals = make_tokens(7, 200, 40, 6, max_rows=50)
    labels = np.random.default_rng(8).random((len(run_starts(ids)), 3)) < 0.3
    parts = chunked(ids, idx, vals, seed=9, n_cuts=20)
    passes = 0

    def chunks() -> Iterator[tuple[np.ndarray, ...]]:
        nonlocal passes
        passes += 1
        return iter(parts)

    small = vf.stats.score_sparse_token_chunks(chunks, labels, 40, memory_budget=2048)
    assert passes > 2
    passes = 0
    one = vf.stats.score_sparse_token_chunks(chunks, labels, 40)
    assert passes == 1
    assert_same_scores(small, one)


def test_ties_and_duplicated_samples() -> None:
    # every sample has the same two token rows: all maxima tie across samples
    row_i = np.array([[0, 1, 2], [2, 3, 0]], np.int32)
    row_v = np.array([[1.0, 2.0, 2.0], [2.0, 2.0, 0.5]], np.float32)
    n = 12
    ids = np.repeat(np.arange(n), 2)
    idx, vals = np.tile(row_i, (n, 1)), np.tile(row_v, (n, 1))
    vals[-2:] *= 2  # one sample above the rest
    labels = np.zeros((n, 1), bool)
    labels[[0, 5, 11], 0] = True
    for mode in ("max", "mean"):
        dense = numpy_aggregate(codes_to_dense(idx, vals, 5), ids, mode)
        parts = chunked(ids, idx, vals, seed=1)
        got = vf.stats.score_sparse_token_chunks(
            lambda parts=parts: iter(parts), labels, 5, mode=mode
        )
        want = vf.stats.score_sparse(*dense_as_codes(dense), labels, 5)
        assert_same_scores(got, want)
        for j in range(4):
            assert got.auroc[j, 0] == roc_auc_score(labels[:, 0], dense[:, j])
        assert got.ties[0] > 0


@pytest.mark.parametrize("mode", ["max", "mean"])
@pytest.mark.parametrize("feature_block", [None, 1, 4])
def test_dense_token_chunks_equal_numpy_then_score_dense(
    mode: str, feature_block: int | None
) -> None:
    ids, _, _ = make_tokens(10, 50, 4, 1)
    rng = np.random.default_rng(11)
    x = (rng.integers(-4, 5, size=(len(ids), 9)) * 0.5).astype(np.float32)
    agg = numpy_aggregate(x, ids, mode)
    labels = rng.random((agg.shape[0], 3)) < 0.4
    parts = chunked(ids, x, seed=12)
    got = vf.stats.score_dense_token_chunks(
        lambda: iter(parts), labels, mode=mode, feature_block=feature_block, top_n=4
    )
    assert_same_scores(got, vf.stats.score_dense(agg, labels, top_n=4))
    for j in (0, 8):
        assert got.auroc[j, 1] == pytest.approx(roc_auc_score(labels[:, 1], agg[:, j]), abs=1e-12)


def test_dense_memory_budget_gives_blocks() -> None:
    ids = np.repeat(np.arange(30), 3)
    x = np.random.default_rng(0).standard_normal((90, 11)).astype(np.float32)
    labels = np.arange(30)[:, None] % 3 == 0
    parts = chunked(ids, x, seed=2)
    small = vf.stats.score_dense_token_chunks(lambda: iter(parts), labels, memory_budget=1)
    assert_same_scores(small, vf.stats.score_dense(numpy_aggregate(x, ids, "max"), labels))


def test_non_contiguous_samples_are_an_error() -> None:
    ids = np.array([3, 3, 4, 4, 3])
    idx = np.zeros((5, 1), np.int32)
    vals = np.ones((5, 1), np.float32)
    labels = np.zeros((2, 1), bool)
    with pytest.raises(InputError, match=r"sample 3 .*contiguous per sample"):
        vf.stats.aggregate_sparse_tokens(ids, idx, vals, 2)
    parts = [(ids[:3], idx[:3], vals[:3]), (ids[3:], idx[3:], vals[3:])]  # across chunks
    with pytest.raises(InputError, match=r"chunk 1: .*sample 3 .*sort the index by sample"):
        vf.stats.score_sparse_token_chunks(lambda: iter(parts), labels, 2)
    dparts = [(ids[:4], vals[:4]), (ids[4:], vals[4:])]
    with pytest.raises(InputError, match="contiguous"):
        vf.stats.score_dense_token_chunks(lambda: iter(dparts), labels)
    with pytest.raises(InputError, match=r"chunk 1: .*sample 3 reappears at token row 4"):
        vf.stats.token_samples(lambda: iter(dparts))


def test_token_samples_gives_the_label_order() -> None:
    ids, idx, vals = make_tokens(15, 40, 8, 2, max_rows=20)
    parts = chunked(ids, idx, vals, seed=16, n_cuts=9)
    got = vf.stats.token_samples(lambda: iter(parts))
    np.testing.assert_array_equal(got, ids[run_starts(ids)])
    np.testing.assert_array_equal(got, vf.stats.aggregate_sparse_tokens(ids, idx, vals, 8).samples)
    assert vf.stats.token_samples(lambda: iter([])).shape == (0,)


def test_empty_chunks_and_empty_streams() -> None:
    ids, idx, vals = make_tokens(13, 10, 8, 2, max_rows=5)
    labels = np.arange(10)[:, None] % 2 == 0
    e = (ids[:0], idx[:0], vals[:0])
    parts = [e, (ids[:7], idx[:7], vals[:7]), e, e, (ids[7:], idx[7:], vals[7:]), e]
    got = vf.stats.score_sparse_token_chunks(lambda: iter(parts), labels, 8)
    want = vf.stats.score_sparse_token_chunks(lambda: iter([(ids, idx, vals)]), labels, 8)
    assert_same_scores(got, want)
    none = vf.stats.score_sparse_token_chunks(lambda: iter([]), np.zeros((0, 2), bool), 8)
    assert none.auroc.shape == (8, 2) and none.n_rows == 0
    dn = vf.stats.score_dense_token_chunks(lambda: iter([]), np.zeros((0, 2), bool))
    assert dn.auroc.shape == (0, 2)
    rows = vf.stats.aggregate_sparse_tokens(ids[:0], idx[:0], vals[:0], 8)
    assert rows.n_samples == 0 and rows.indptr.tolist() == [0]
    k0 = vf.stats.aggregate_sparse_tokens(
        ids, np.zeros((len(ids), 0), np.int32), np.zeros((len(ids), 0)), 8
    )
    assert k0.n_samples == 10 and k0.nnz == 0  # samples without codes are all zeros


def test_wrong_inputs_give_clear_errors() -> None:
    ids = np.array([0, 0, 1])
    idx = np.array([[0, 1], [1, 2], [2, 3]], np.int32)
    vals = np.ones((3, 2), np.float32)
    labels = np.zeros((2, 1), bool)
    agg = vf.stats.aggregate_sparse_tokens
    with pytest.raises(InputError, match="indices must be an integer"):
        agg(ids, idx.astype(np.float32), vals, 4)
    with pytest.raises(ShapeError, match="indices has shape"):
        agg(ids, idx, vals[:, :1], 4)
    with pytest.raises(ShapeError, match="sample_ids has 2 entries"):
        agg(ids[:2], idx, vals, 4)
    with pytest.raises(ShapeError, match="sample_ids must be 1-D"):
        agg(ids[:, None], idx, vals, 4)
    with pytest.raises(InputError, match="sample_ids must be an integer"):
        agg(ids.astype(float), idx, vals, 4)
    with pytest.raises(InputError, match=r"value 3 .*n_features=3"):
        agg(ids, idx, vals, 3)
    with pytest.raises(InputError, match="feature 1 twice"):
        agg(ids, np.array([[0, 1], [1, 1], [2, 3]]), vals, 4)
    with pytest.raises(InputError, match="NaN"):
        agg(ids, idx, np.where(vals > 0, np.nan, 0), 4)
    with pytest.raises(InputError, match="mode must be one of"):
        agg(ids, idx, vals, 4, "median")
    with pytest.raises(ShapeError, match="2-D"):
        vf.stats.aggregate_dense_tokens(ids, np.ones(3, np.float32))
    one = lambda: iter([(ids, idx, vals)])  # noqa: E731
    with pytest.raises(ShapeError, match="labels has 3 rows but the chunks hold 2"):
        vf.stats.score_sparse_token_chunks(one, np.zeros((3, 1), bool), 4)
    with pytest.raises(InputError, match="more than the 1 samples"):
        vf.stats.score_sparse_token_chunks(one, np.zeros((1, 1), bool), 4)
    with pytest.raises(InputError, match=r"chunk 0: .*value 3"):
        vf.stats.score_sparse_token_chunks(one, labels, 3)
    with pytest.raises(InputError, match="feature_block must be > 0"):
        vf.stats.score_sparse_token_chunks(one, labels, 4, feature_block=0)
    with pytest.raises(InputError, match="memory_budget must be > 0"):
        vf.stats.score_sparse_token_chunks(one, labels, 4, memory_budget=-1)
    with pytest.raises(InputError, match=r"must be \(sample_ids, indices, values\)"):
        vf.stats.score_sparse_token_chunks(lambda: iter([(ids, idx)]), labels, 4)
    dparts = [(ids, vals), (np.array([2]), np.ones((1, 3), np.float32))]
    with pytest.raises(InputError, match="chunk 1: x has d=3 columns"):
        vf.stats.score_dense_token_chunks(lambda: iter(dparts), np.zeros((3, 1), bool))
    calls = iter([[(ids, idx, vals)], [(ids + 5, idx, vals)]])
    with pytest.raises(InputError, match="other samples on a later pass"):
        vf.stats.score_sparse_token_chunks(lambda: iter(next(calls)), labels, 4, feature_block=2)


def test_torch_and_index_dtypes_agree() -> None:
    torch = pytest.importorskip("torch")
    ids, idx, vals = make_tokens(14, 20, 16, 3, max_rows=9)
    want = vf.stats.aggregate_sparse_tokens(ids, idx, vals, 16)
    for dt in (np.int64, np.uint16, np.int16, np.uint32, np.int8):
        got = vf.stats.aggregate_sparse_tokens(ids, idx.astype(dt), vals, 16)
        np.testing.assert_array_equal(got.to_dense(), want.to_dense())
    got = vf.stats.aggregate_sparse_tokens(
        torch.from_numpy(ids), torch.from_numpy(idx), torch.from_numpy(vals).half(), 16
    )
    np.testing.assert_array_equal(got.to_dense(), want.to_dense())
