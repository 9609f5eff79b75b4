"""Exact concept statistics of SAE features and neurons (Rust core, GIL released).

    import vlmfast as vf
    a = vf.stats.auroc_sparse(indices, values, labels, n_features)   # float64[F, C]
    a = vf.stats.auroc(scores, labels)                               # float64[F, C]
    s = vf.stats.score_sparse(indices, values, labels, n_features)   # UnitScores
    lo, hi = s.ci(0.95); p = s.pvalues(); sig = vf.stats.benjamini_hochberg(p)

    s = vf.stats.score_sparse_token_chunks(chunks, labels, n_features)  # per-sample max over tokens

``vlmfast.stats.reference`` holds the pure-numpy references the tests compare against;
``vlmfast.stats.inputs`` the array checks other packages share (``as_numpy``,
``check_labels``). Token-level scoring: ``tokens`` (the streaming scorers),
``token_aggregate`` (per-sample max/mean), ``token_inputs`` (chunk validation).
"""

from __future__ import annotations

from vlmfast.stats.api import (
    CodeChunk,
    auroc,
    auroc_sparse,
    score_dense,
    score_sparse,
    score_sparse_chunks,
)
from vlmfast.stats.scores import UnitScores
from vlmfast.stats.significance import (
    benjamini_hochberg,
    bh_adjusted,
    mann_whitney_pvalues,
)
from vlmfast.stats.tokens import (
    DenseTokenChunk,
    SparseRows,
    TokenChunk,
    aggregate_dense_tokens,
    aggregate_sparse_tokens,
    score_dense_token_chunks,
    score_sparse_token_chunks,
    token_samples,
)

__all__ = [
    "CodeChunk",
    "DenseTokenChunk",
    "SparseRows",
    "TokenChunk",
    "UnitScores",
    "aggregate_dense_tokens",
    "aggregate_sparse_tokens",
    "auroc",
    "auroc_sparse",
    "benjamini_hochberg",
    "bh_adjusted",
    "mann_whitney_pvalues",
    "score_dense",
    "score_dense_token_chunks",
    "score_sparse",
    "score_sparse_chunks",
    "score_sparse_token_chunks",
    "token_samples",
]
