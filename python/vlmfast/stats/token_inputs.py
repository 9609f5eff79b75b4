"""Validation of token streams: the chunk tuples, sample ids, modes and memory budgets
that the token-level scorers (:mod:`vlmfast.stats.tokens`) take, with clear errors."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from vlmfast.errors import InputError, ShapeError
from vlmfast.stats.inputs import _INDEX_DTYPES, as_numpy

TokenChunk = tuple[Any, Any, Any]
"""Consecutive token rows of top-k codes: ``(sample_ids int64[n], indices[n, k], values[n, k])``."""

DenseTokenChunk = tuple[Any, Any]
"""Consecutive dense token rows: ``(sample_ids int64[n], x[n, d])``."""

MODES = ("max", "mean")

DEFAULT_MEMORY_BUDGET = 4 << 30
"""Bytes the per-block sample-level nonzeros (sparse) or aggregated columns (dense) may use."""


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise InputError(f"mode must be one of {MODES}, got {mode!r}")
    return mode


def check_sample_ids(x: Any, n_rows: int, where: str) -> npt.NDArray[np.int64]:
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


def check_codes(
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
    sid = check_sample_ids(ids, idx.shape[0], where)
    return sid, np.ascontiguousarray(idx), np.ascontiguousarray(vals, dtype=np.float32)


def check_dense(
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
    sid = check_sample_ids(ids, arr.shape[0], where)
    return sid, np.ascontiguousarray(arr, dtype=np.float32)


def check_block(feature_block: int | None) -> int | None:
    if feature_block is None:
        return None
    if isinstance(feature_block, bool) or not isinstance(feature_block, (int, np.integer)):
        raise InputError(f"feature_block must be an int > 0 or None, got {feature_block!r}")
    if feature_block <= 0:
        raise InputError(f"feature_block must be > 0, got {feature_block}")
    return int(feature_block)


def check_budget(memory_budget: int | None) -> int:
    if memory_budget is None:
        return DEFAULT_MEMORY_BUDGET
    if isinstance(memory_budget, bool) or not isinstance(memory_budget, (int, np.integer)):
        raise InputError(f"memory_budget must be an int (bytes) or None, got {memory_budget!r}")
    if memory_budget <= 0:
        raise InputError(f"memory_budget must be > 0 bytes, got {memory_budget}")
    return int(memory_budget)


def in_chunk(i: int, err: InputError) -> InputError:
    """The same error class, its message prefixed with the chunk number."""
    out = type(err)(f"chunk {i}: {err}")
    out.__cause__ = err
    return out


def same_samples(
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
