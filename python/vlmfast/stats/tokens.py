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
from typing import Any

import numpy as np
import numpy.typing as npt

from vlmfast.errors import InputError
from vlmfast.stats.api import _concat_units, score_dense
from vlmfast.stats.inputs import check_labels, check_n_features, check_top_n
from vlmfast.stats.scores import UnitScores
from vlmfast.stats.token_aggregate import (
    SparseRows,
    _native,
    aggregate_dense_tokens,
    aggregate_sparse_tokens,
    token_samples,
)
from vlmfast.stats.token_inputs import (
    DEFAULT_MEMORY_BUDGET,
    MODES,
    DenseTokenChunk,
    TokenChunk,
    check_block,
    check_budget,
    check_codes,
    check_dense,
    check_mode,
    in_chunk,
    same_samples,
)


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
        with_se: compute DeLong standard errors (as :func:`~vlmfast.stats.score_sparse`).
        stats: compute firing counts, means on/off concept and top-n precision.
        top_n: exemplars kept per feature (largest activations).
        progress: called with each chunk's token rows, on every pass.

    Results equal aggregating with :func:`aggregate_sparse_tokens` (or numpy)
    and calling :func:`~vlmfast.stats.score_sparse` on the samples.

    Returns:
        The per-sample scores of the ``n_features`` features as :class:`UnitScores`
            (AUROC in [0, 1], firing counts in samples).

    Raises:
        InputError: a bad argument, or a chunk that is invalid (named by its index) or
            differs between passes.
    """
    n_features = check_n_features(n_features)
    mode = check_mode(mode)
    block = check_block(feature_block)
    budget = None if block is not None else check_budget(memory_budget)
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
            sid, idx, vals = check_codes(chunk, f"chunk {i}: ")
            if sid.shape[0] == 0:
                continue
            try:
                scorer.push(sid, idx, vals)
            except InputError as err:
                raise in_chunk(i, err) from err
            if progress is not None:
                progress(int(sid.shape[0]))
        scorer.finish()
        first = same_samples(first, scorer.samples(), n_samples)
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

    Returns:
        The per-sample scores of the ``d`` columns as :class:`UnitScores` (AUROC in [0, 1]).

    Raises:
        InputError: a bad argument, or a chunk that is invalid (named by its index) or
            differs between passes.
    """
    mode = check_mode(mode)
    block = check_block(feature_block)
    lab = check_labels(labels)
    n_samples = lab.shape[0]
    top_n = check_top_n(top_n)
    if block is None:
        budget = check_budget(memory_budget)
        threads = int(_native().worker_threads())
        scratch = threads * 16 * 8 * 2 * max(n_samples, 1)  # score_dense's per-thread keys + radix
        block = max(1, (budget - scratch) // (4 * max(n_samples, 1)))
    parts: list[UnitScores] = []
    first: npt.NDArray[np.int64] | None = None
    lo, d = 0, None
    while d is None or lo < d:
        scorer = _native().DenseTokenScorer(lo, lo + block, mode, n_samples)
        for i, chunk in enumerate(chunks()):
            sid, x = check_dense(chunk, f"chunk {i}: ")
            if sid.shape[0] == 0:
                continue
            try:
                scorer.push(sid, x)
            except InputError as err:
                raise in_chunk(i, err) from err
            if progress is not None:
                progress(int(sid.shape[0]))
        scorer.finish()
        first = same_samples(first, scorer.samples(), n_samples)
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
