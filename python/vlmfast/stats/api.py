"""Typed entry points of the native statistics core (validation here, work in Rust).

All functions release the GIL and run on rayon's thread pool
(``RAYON_NUM_THREADS`` caps it). Activations are compared as float32.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import numpy.typing as npt

from vlmfast.errors import InputError, ShapeError
from vlmfast.stats.inputs import (
    check_float,
    check_indices,
    check_labels,
    check_n_features,
    check_top_n,
)
from vlmfast.stats.scores import UnitScores


def _native() -> Any:
    from vlmfast import _native

    return _native


def _check_codes(
    indices: Any, values: Any, n_features: int
) -> tuple[np.ndarray, npt.NDArray[np.float32]]:
    n_features = check_n_features(n_features)
    vals = check_float(values, "values", 2)
    idx = check_indices(indices, "indices", n_features)
    if idx.shape != vals.shape:
        raise ShapeError(f"indices has shape {idx.shape} but values has shape {vals.shape}")
    return idx, vals


def score_sparse(
    indices: Any,
    values: Any,
    labels: Any,
    n_features: int,
    *,
    with_se: bool = True,
    stats: bool = True,
    top_n: int = 16,
) -> UnitScores:
    """Scores top-k SAE codes against concept labels: every feature x every concept.

    Args:
        indices: ``[N, k]`` feature ids of each row's code (int16/32/64, uint16/32);
            no feature twice in a row.
        values: ``[N, k]`` activations (cast to float32; NaN is an error). Zero values
            are the same as absent features.
        labels: ``[N, C]`` bool (or 0/1) concept labels of the same rows.
        n_features: number of SAE latents F.
        with_se: compute DeLong standard errors.
        stats: compute firing counts, means on/off concept and top-n precision.
        top_n: exemplars kept per feature (largest activations).

    Only the nonzeros are sorted; the rows where a feature is zero form one tie
    group, so a feature that never fires scores exactly 0.5.

    Returns:
        The scores as :class:`UnitScores`: ``auroc[F, C]`` in [0, 1] (NaN where a concept
            has no positive or no negative row), DeLong ``se``, firing counts (rows) and
            the top-n exemplar rows.

    Raises:
        InputError: a bad ``n_features``/``top_n``, NaN values or out-of-range ids.
        ShapeError: ``indices``, ``values`` and ``labels`` disagree in shape.
    """
    idx, vals = _check_codes(indices, values, n_features)
    lab = check_labels(labels, idx.shape[0])
    d = _native().score_sparse_codes(
        idx, vals, lab, int(n_features), stats=stats, with_se=with_se, top_n=check_top_n(top_n)
    )
    if not with_se:
        d.pop("se", None)
    return UnitScores.from_native(d)


def score_dense(
    scores: Any,
    labels: Any,
    *,
    with_se: bool = True,
    stats: bool = True,
    top_n: int = 16,
) -> UnitScores:
    """Scores dense units ``scores[N, F]`` (MLP neurons, head norms) against ``labels[N, C]``.

    One sort per unit; all concepts are aggregated in the same pass. Arguments
    as :func:`score_sparse`.

    Returns:
        The scores of the ``F`` units as :class:`UnitScores`, as :func:`score_sparse`.
    """
    sc = check_float(scores, "scores", 2)
    lab = check_labels(labels, sc.shape[0])
    d = _native().score_dense_units(sc, lab, stats=stats, with_se=with_se, top_n=check_top_n(top_n))
    if not with_se:
        d.pop("se", None)
    return UnitScores.from_native(d)


def auroc_sparse(
    indices: Any, values: Any, labels: Any, n_features: int
) -> npt.NDArray[np.float64]:
    """Returns the exact AUROC ``float64[F, C]``, in [0, 1], of top-k codes
    ``(indices[N,k], values[N,k])``.

    NaN where a concept has no positive or no negative row.
    """
    return score_sparse(
        indices, values, labels, n_features, with_se=False, stats=False, top_n=0
    ).auroc


def auroc(scores: Any, labels: Any) -> npt.NDArray[np.float64]:
    """Returns the exact AUROC ``float64[F, C]``, in [0, 1], of every column of
    ``scores[N, F]`` for ``labels[N, C]``.

    NaN where a concept has no positive or no negative row.
    """
    return score_dense(scores, labels, with_se=False, stats=False, top_n=0).auroc


CodeChunk = tuple[Any, Any]
"""One chunk of consecutive rows of top-k codes: ``(indices[n, k], values[n, k])``."""


def score_sparse_chunks(
    chunks: Callable[[], Iterable[CodeChunk]],
    labels: Any,
    n_features: int,
    *,
    feature_block: int | None = None,
    with_se: bool = True,
    stats: bool = True,
    top_n: int = 16,
    progress: Callable[[int], None] | None = None,
) -> UnitScores:
    """Streaming :func:`score_sparse` for codes that do not fit in memory.

    ``chunks()`` must yield the code chunks of consecutive rows, in order, each
    time it is called. Features are scored in blocks of ``feature_block``
    (default: all at once); each block re-reads the chunks and keeps only its
    features' nonzeros, so peak memory is about 28 bytes per nonzero of one
    block plus the output tables. ``progress(rows)`` is called after each chunk.
    Results equal :func:`score_sparse` on the concatenated codes exactly.

    Returns:
        The scores of the ``n_features`` features as :class:`UnitScores`, exactly as
            :func:`score_sparse` on the concatenated codes.

    Raises:
        InputError: ``feature_block`` is not positive (or a chunk is invalid).
        ShapeError: the chunks do not hold one row per row of ``labels``.
    """
    n_features = check_n_features(n_features)
    lab = check_labels(labels)
    block = n_features if feature_block is None else int(feature_block)
    if block <= 0:
        raise InputError(f"feature_block must be > 0, got {feature_block}")
    top_n = check_top_n(top_n)
    parts: list[UnitScores] = []
    for lo in range(0, max(n_features, 1), block):
        hi = min(n_features, lo + block)
        rows_l, idx_l, val_l = [], [], []
        row0 = 0
        for ind, val in chunks():
            idx, vals = _check_codes(ind, val, n_features)
            keep = (idx >= lo) & (idx < hi) & (vals != 0)
            r, _ = np.nonzero(keep)
            rows_l.append(r.astype(np.int64) + row0)
            idx_l.append(idx[keep].astype(np.int64) - lo)
            val_l.append(vals[keep])
            row0 += idx.shape[0]
            if progress is not None:
                progress(idx.shape[0])
        if row0 != lab.shape[0]:
            raise ShapeError(f"labels has {lab.shape[0]} rows but the chunks have {row0}")
        cat = lambda xs, dt: np.concatenate(xs) if xs else np.zeros(0, dt)  # noqa: E731
        d = _native().score_sparse_triplets(
            cat(rows_l, np.int64),
            cat(idx_l, np.int64),
            cat(val_l, np.float32),
            lab,
            hi - lo,
            stats=stats,
            with_se=with_se,
            top_n=top_n,
        )
        if not with_se:
            d.pop("se", None)
        parts.append(UnitScores.from_native(d))
        del rows_l, idx_l, val_l
    return _concat_units(parts)


def _concat_units(parts: list[UnitScores]) -> UnitScores:
    if len(parts) == 1:
        return parts[0]

    def cat(name: str) -> Any:
        xs = [getattr(p, name) for p in parts]
        return None if xs[0] is None else np.concatenate(xs, axis=0)

    first = parts[0]
    return UnitScores(
        auroc=cat("auroc"),
        n_pos=first.n_pos,
        n_rows=first.n_rows,
        firing=cat("firing"),
        ties=cat("ties"),
        se=cat("se"),
        pos_firing=cat("pos_firing"),
        mean_pos=cat("mean_pos"),
        mean_neg=cat("mean_neg"),
        precision=cat("precision"),
        top_rows=cat("top_rows"),
        top_values=cat("top_values"),
    )


__all__ = [
    "CodeChunk",
    "auroc",
    "auroc_sparse",
    "score_dense",
    "score_sparse",
    "score_sparse_chunks",
]
