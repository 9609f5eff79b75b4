"""Token-level scoring: a unit's activation per *sample* is its max (or mean) over the
sample's token rows, then the exact AUROC over samples (Rust core, GIL released).

Token-level hooks (an image block's residual at every patch) store many rows per
sample; "the AUROC of a feature for images containing the concept" needs one
activation per image. Semantics, the same for every function here:

* A sample is a run of equal ``sample_ids``. Its token rows must be contiguous
  (a sample may span chunk boundaries); an id that reappears after rows of other
  samples is an :class:`~vlmfast.errors.InputError` (sort the index by sample).
* Scored rows are the distinct samples in order of first appearance; ``labels``
  is ``bool[S, C]`` in that order and ``UnitScores.top_rows`` index it (0..S-1).
* Top-k codes: a feature absent from a token row is 0 in that row. ``max`` is the
  largest value over the sample's rows (so at least 0 unless the feature is in
  every row), ``mean`` the sum over the rows divided by the sample's row count.
  This equals densifying every row and reducing over the sample's rows.
* ``max`` is exact in float32; ``mean`` is a float64 sum in token-row order divided
  by the row count, rounded to float32 (what ``np.add.reduceat`` of the float64 rows
  divided by the counts gives).

    rows = vf.stats.aggregate_sparse_tokens(sample_ids, idx, vals, n_features)
    s = vf.stats.score_sparse_token_chunks(lambda: chunks_of(index), labels, n_features)

The streaming scorers give results equal to aggregating in numpy and calling
:func:`~vlmfast.stats.score_sparse` / :func:`~vlmfast.stats.score_dense`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from vlmfast.errors import InputError, ShapeError
from vlmfast.stats._inputs import (
    _INDEX_DTYPES,
    as_numpy,
    check_labels,
    check_n_features,
    check_top_n,
)
from vlmfast.stats.api import _concat_units, score_dense
from vlmfast.stats.scores import UnitScores

TokenChunk = tuple[Any, Any, Any]
"""Consecutive token rows of top-k codes: ``(sample_ids int64[n], indices[n, k], values[n, k])``."""

DenseTokenChunk = tuple[Any, Any]
"""Consecutive dense token rows: ``(sample_ids int64[n], x[n, d])``."""

MODES = ("max", "mean")

DEFAULT_MEMORY_BUDGET = 4 << 30
"""Bytes the per-block sample-level nonzeros (sparse) or aggregated columns (dense) may use."""


def _native() -> Any:
    from vlmfast import _native

    return _native


@dataclass(frozen=True)
class SparseRows:
    """Per-sample aggregated top-k codes in CSR form (only nonzeros stored).

    Sample ``s`` (id ``samples[s]``) has features ``indices[indptr[s]:indptr[s+1]]``
    (ascending) with values ``values[indptr[s]:indptr[s+1]]``; every other feature is 0.
    """

    samples: npt.NDArray[np.int64]
    """Sample ids ``[S]`` in order of first appearance."""
    indptr: npt.NDArray[np.int64]
    """``[S + 1]`` offsets into ``indices`` / ``values``."""
    indices: npt.NDArray[np.int32]
    """``[nnz]`` feature ids."""
    values: npt.NDArray[np.float32]
    """``[nnz]`` aggregated activations (never 0)."""
    n_features: int
    """Number of features F."""

    @property
    def n_samples(self) -> int:
        return int(self.samples.shape[0])

    @property
    def nnz(self) -> int:
        return int(self.indices.shape[0])

    def rows(self) -> npt.NDArray[np.int64]:
        """The sample (0..S-1) of every stored entry ``[nnz]``."""
        return np.repeat(np.arange(self.n_samples, dtype=np.int64), np.diff(self.indptr))

    def to_dense(self) -> npt.NDArray[np.float32]:
        """``float32[S, n_features]`` (small inputs only)."""
        out = np.zeros((self.n_samples, self.n_features), dtype=np.float32)
        out[self.rows(), self.indices] = self.values
        return out


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise InputError(f"mode must be one of {MODES}, got {mode!r}")
    return mode


def _check_sample_ids(x: Any, n_rows: int, where: str) -> npt.NDArray[np.int64]:
    arr = as_numpy(x, "sample_ids")
    if arr.ndim != 1:
        raise ShapeError(f"{where}sample_ids must be 1-D [n], got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"{where}sample_ids must be an integer array, got dtype {arr.dtype}")
    if arr.shape[0] != n_rows:
        raise ShapeError(f"{where}sample_ids has {arr.shape[0]} entries but the rows are {n_rows}")
    if arr.dtype == np.uint64 and arr.size and int(arr.max()) > np.iinfo(np.int64).max:
        raise InputError(f"{where}sample_ids has values beyond int64")
    return np.ascontiguousarray(arr, dtype=np.int64)


def _check_codes(
    chunk: Any, where: str = ""
) -> tuple[npt.NDArray[np.int64], np.ndarray, npt.NDArray[np.float32]]:
    """``(sample_ids, indices, values)`` as arrays the native core takes; ranges and NaN
    are checked natively (one pass, no temporaries here)."""
    try:
        ids, indices, values = chunk
    except (TypeError, ValueError) as err:
        raise InputError(
            f"{where}a token chunk must be (sample_ids, indices, values), got {type(chunk).__name__}"
        ) from err
    idx = as_numpy(indices, "indices")
    vals = as_numpy(values, "values")
    if idx.ndim != 2 or vals.ndim != 2:
        raise ShapeError(
            f"{where}indices and values must be 2-D [n, k], got shapes {idx.shape} and {vals.shape}"
        )
    if idx.shape != vals.shape:
        raise ShapeError(f"{where}indices has shape {idx.shape} but values has shape {vals.shape}")
    if not np.issubdtype(idx.dtype, np.integer):
        raise InputError(f"{where}indices must be an integer array, got dtype {idx.dtype}")
    if idx.dtype.type not in _INDEX_DTYPES:
        idx = idx.astype(np.int64)
    if not (np.issubdtype(vals.dtype, np.floating) or np.issubdtype(vals.dtype, np.integer)):
        raise InputError(f"{where}values must be numeric, got dtype {vals.dtype}")
    sid = _check_sample_ids(ids, idx.shape[0], where)
    return sid, np.ascontiguousarray(idx), np.ascontiguousarray(vals, dtype=np.float32)


def _check_dense(
    chunk: Any, where: str = ""
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    try:
        ids, x = chunk
    except (TypeError, ValueError) as err:
        raise InputError(
            f"{where}a dense token chunk must be (sample_ids, x), got {type(chunk).__name__}"
        ) from err
    arr = as_numpy(x, "x")
    if arr.ndim != 2:
        raise ShapeError(f"{where}x must be 2-D [n, d], got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise InputError(f"{where}x must be numeric, got dtype {arr.dtype}")
    sid = _check_sample_ids(ids, arr.shape[0], where)
    return sid, np.ascontiguousarray(arr, dtype=np.float32)


def _check_block(feature_block: int | None) -> int | None:
    if feature_block is None:
        return None
    if isinstance(feature_block, bool) or not isinstance(feature_block, (int, np.integer)):
        raise InputError(f"feature_block must be an int > 0 or None, got {feature_block!r}")
    if feature_block <= 0:
        raise InputError(f"feature_block must be > 0, got {feature_block}")
    return int(feature_block)


def _check_budget(memory_budget: int | None) -> int:
    if memory_budget is None:
        return DEFAULT_MEMORY_BUDGET
    if isinstance(memory_budget, bool) or not isinstance(memory_budget, (int, np.integer)):
        raise InputError(f"memory_budget must be an int (bytes) or None, got {memory_budget!r}")
    if memory_budget <= 0:
        raise InputError(f"memory_budget must be > 0 bytes, got {memory_budget}")
    return int(memory_budget)


def _in_chunk(i: int, err: InputError) -> InputError:
    """The same error class, its message prefixed with the chunk number."""
    out = type(err)(f"chunk {i}: {err}")
    out.__cause__ = err
    return out


def token_samples(chunks: Callable[[], Iterable[Any]]) -> npt.NDArray[np.int64]:
    """The distinct sample ids of a token stream in order of first appearance: the
    order ``labels`` must follow for the ``score_*_token_chunks`` functions.

    Reads only each chunk's ``sample_ids`` (its first element) and checks that
    every sample's rows are contiguous, with the same error as the scorers.
    """
    out: list[npt.NDArray[np.int64]] = []
    seen: set[int] = set()
    last: int | None = None
    row0 = 0
    for i, chunk in enumerate(chunks()):
        ids = as_numpy(chunk[0], "sample_ids")
        sid = _check_sample_ids(ids, ids.shape[0] if ids.ndim else -1, f"chunk {i}: ")
        if sid.shape[0] == 0:
            continue
        starts = np.flatnonzero(np.r_[True, sid[1:] != sid[:-1]])
        if last is not None and sid[0] == last:
            starts = starts[1:]
        new = sid[starts]
        for s, v in zip(starts.tolist(), new.tolist()):
            if v in seen:
                raise InputError(
                    f"chunk {i}: sample_ids: sample {v} reappears at token row {row0 + s} after "
                    "rows of other samples; token rows must be contiguous per sample "
                    "(sort the index by sample)"
                )
            seen.add(v)
        out.append(new)
        last = int(sid[-1])
        row0 += sid.shape[0]
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def aggregate_dense_tokens(
    sample_ids: Any, x: Any, mode: str = "max"
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """Per-sample max / mean of dense token rows ``x[n, d]``.

    Returns ``(samples int64[S], float32[S, d])``, samples in order of first
    appearance (their rows must be contiguous). NaN in ``x`` is an error.
    """
    sid, arr = _check_dense((sample_ids, x))
    samples, out = _native().aggregate_dense_tokens(sid, arr, _check_mode(mode))
    return samples, out


def aggregate_sparse_tokens(
    sample_ids: Any, indices: Any, values: Any, n_features: int, mode: str = "max"
) -> SparseRows:
    """Per-sample max / mean of top-k token codes ``(indices[n, k], values[n, k])``.

    The merge of the rows' sparse codes: a feature absent from a token row is 0
    there; a feature no row of a sample lists is 0 (not stored) for that sample.
    A feature listed twice in one token row, an index outside ``[0, n_features)``
    and NaN are errors.
    """
    n_features = check_n_features(n_features)
    sid, idx, vals = _check_codes((sample_ids, indices, values))
    samples, indptr, ind, val = _native().aggregate_sparse_tokens(
        sid, idx, vals, n_features, _check_mode(mode)
    )
    return SparseRows(samples, indptr, ind, val, n_features)


def score_sparse_token_chunks(
    chunks: Callable[[], Iterable[TokenChunk]],
    labels: Any,
    n_features: int,
    *,
    mode: str = "max",
    feature_block: int | None = None,
    memory_budget: int | None = None,
    with_se: bool = True,
    stats: bool = True,
    top_n: int = 16,
    progress: Callable[[int], None] | None = None,
) -> UnitScores:
    """Scores top-k token codes aggregated per sample, streamed from chunks.

    Args:
        chunks: called once per pass; yields :data:`TokenChunk` s of consecutive
            token rows, the same ones in the same order each time.
        labels: ``bool[S, C]`` concept labels of the distinct samples, in order of
            first appearance.
        n_features: number of SAE latents F.
        mode: ``"max"`` or ``"mean"`` over each sample's token rows.
        feature_block: score features in fixed blocks of this many, one pass over
            the chunks per block. Default: as many as fit ``memory_budget``.
        memory_budget: bytes the sample-level nonzeros of one block may hold (8 B
            each plus growth slack; default :data:`DEFAULT_MEMORY_BUDGET`). A pass
            starts with every remaining feature and, when the nonzeros seen so far,
            projected to all S samples, would not fit, drops the highest features
            (scored by the next pass). Output tables (~32 B x F x C with SE and
            stats) and the labels come on top. Ignored when ``feature_block`` is set.
        with_se, stats, top_n: as :func:`~vlmfast.stats.score_sparse`.
        progress: called with each chunk's token rows, on every pass.

    Results equal aggregating with :func:`aggregate_sparse_tokens` (or numpy)
    and calling :func:`~vlmfast.stats.score_sparse` on the samples.
    """
    n_features = check_n_features(n_features)
    mode = _check_mode(mode)
    block = _check_block(feature_block)
    budget = None if block is not None else _check_budget(memory_budget)
    lab = check_labels(labels)
    n_samples = lab.shape[0]
    top_n = check_top_n(top_n)
    parts: list[UnitScores] = []
    first: npt.NDArray[np.int64] | None = None
    lo = 0
    while True:
        hi = n_features if block is None else min(n_features, lo + block)
        scorer = _native().SparseTokenScorer(n_features, lo, hi, mode, n_samples, budget)
        for i, chunk in enumerate(chunks()):
            sid, idx, vals = _check_codes(chunk, f"chunk {i}: ")
            if sid.shape[0] == 0:
                continue
            try:
                scorer.push(sid, idx, vals)
            except InputError as err:
                raise _in_chunk(i, err) from err
            if progress is not None:
                progress(int(sid.shape[0]))
        scorer.finish()
        first = _same_samples(first, scorer.samples(), n_samples)
        hi = int(scorer.hi)
        d = scorer.score(lab, stats=stats, with_se=with_se, top_n=top_n)
        if not with_se:
            d.pop("se", None)
        parts.append(UnitScores.from_native(d))
        del scorer, d
        lo = hi
        if lo >= n_features:
            break
    return _concat_units(parts)


def _same_samples(
    first: npt.NDArray[np.int64] | None, samples: npt.NDArray[np.int64], n_samples: int
) -> npt.NDArray[np.int64]:
    if samples.shape[0] != n_samples:
        raise ShapeError(
            f"labels has {n_samples} rows but the chunks hold {samples.shape[0]} samples"
        )
    if first is not None and not np.array_equal(first, samples):
        raise InputError(
            "chunks() yielded other samples on a later pass; it must yield the same chunks "
            "in the same order each time it is called"
        )
    return samples


def score_dense_token_chunks(
    chunks: Callable[[], Iterable[DenseTokenChunk]],
    labels: Any,
    *,
    mode: str = "max",
    feature_block: int | None = None,
    memory_budget: int | None = None,
    with_se: bool = True,
    stats: bool = True,
    top_n: int = 16,
    progress: Callable[[int], None] | None = None,
) -> UnitScores:
    """Scores dense token rows ``x[n, d]`` aggregated per sample, streamed from chunks.

    Units are the ``d`` columns. Each pass aggregates a block of columns into a
    ``float32[S, block]`` matrix and scores it like :func:`~vlmfast.stats.score_dense`;
    the block is ``feature_block`` columns or as many as fit ``memory_budget``
    (4 B per sample and column, plus the sort scratch). Other arguments as
    :func:`score_sparse_token_chunks`; results equal numpy aggregation followed by
    :func:`~vlmfast.stats.score_dense`.
    """
    mode = _check_mode(mode)
    block = _check_block(feature_block)
    lab = check_labels(labels)
    n_samples = lab.shape[0]
    top_n = check_top_n(top_n)
    if block is None:
        budget = _check_budget(memory_budget)
        threads = int(_native().worker_threads())
        scratch = threads * 16 * 8 * 2 * max(n_samples, 1)  # score_dense's per-thread keys + radix
        block = max(1, (budget - scratch) // (4 * max(n_samples, 1)))
    parts: list[UnitScores] = []
    first: npt.NDArray[np.int64] | None = None
    lo, d = 0, None
    while d is None or lo < d:
        scorer = _native().DenseTokenScorer(lo, lo + block, mode, n_samples)
        for i, chunk in enumerate(chunks()):
            sid, x = _check_dense(chunk, f"chunk {i}: ")
            if sid.shape[0] == 0:
                continue
            try:
                scorer.push(sid, x)
            except InputError as err:
                raise _in_chunk(i, err) from err
            if progress is not None:
                progress(int(sid.shape[0]))
        scorer.finish()
        first = _same_samples(first, scorer.samples(), n_samples)
        if d is None:
            d = 0 if scorer.d is None else int(scorer.d)
            if d == 0:  # no units (or no rows at all): the empty tables
                return score_dense(
                    np.zeros((n_samples, 0), np.float32),
                    lab,
                    with_se=with_se,
                    stats=stats,
                    top_n=top_n,
                )
        res = scorer.score(lab, stats=stats, with_se=with_se, top_n=top_n)
        if not with_se:
            res.pop("se", None)
        parts.append(UnitScores.from_native(res))
        del scorer, res
        lo += block
    return _concat_units(parts)


__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "MODES",
    "DenseTokenChunk",
    "SparseRows",
    "TokenChunk",
    "aggregate_dense_tokens",
    "aggregate_sparse_tokens",
    "score_dense_token_chunks",
    "score_sparse_token_chunks",
    "token_samples",
]
