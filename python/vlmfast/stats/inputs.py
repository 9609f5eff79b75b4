"""Input validation shared by the statistics entry points: arrays in, clear errors out."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from vlmfast.errors import InputError, ShapeError

_INDEX_DTYPES = (np.int64, np.int32, np.uint32, np.int16, np.uint16)


def as_numpy(x: Any, name: str) -> np.ndarray:
    """A numpy view of ``x`` (numpy array, torch tensor or nested list)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor without importing torch
        x = x.detach().cpu()
        if str(x.dtype) == "torch.bfloat16":
            x = x.float()
        x = x.numpy()
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as err:
        raise InputError(f"{name} cannot be converted to an array: {err}") from err


def check_labels(labels: Any, n_rows: int | None = None) -> npt.NDArray[np.bool_]:
    """``labels`` as a C-contiguous bool ``[N, C]`` array; 0/1 integers are accepted."""
    arr = as_numpy(labels, "labels")
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ShapeError(f"labels must be [samples, concepts], got shape {arr.shape}")
    if arr.dtype != np.bool_:
        if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
            raise InputError(f"labels must be bool (or 0/1), got dtype {arr.dtype}")
        if arr.size and not np.isin(arr, (0, 1)).all():
            raise InputError("labels must be bool or 0/1; found other values")
        arr = arr.astype(bool)
    if n_rows is not None and arr.shape[0] != n_rows:
        raise ShapeError(f"labels has {arr.shape[0]} rows but the activations have {n_rows}")
    return np.ascontiguousarray(arr)


def check_float(x: Any, name: str, ndim: int) -> npt.NDArray[np.float32]:
    """``x`` as C-contiguous float32 with ``ndim`` dimensions (NaN is checked natively)."""
    arr = as_numpy(x, name)
    if arr.ndim != ndim:
        raise ShapeError(f"{name} must have {ndim} dimensions, got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise InputError(f"{name} must be numeric, got dtype {arr.dtype}")
    # NaN is rejected by the native core in its first pass (no [N, F] bool temporary here)
    return np.ascontiguousarray(arr, dtype=np.float32)


def check_indices(x: Any, name: str, n_features: int, ndim: int = 2) -> np.ndarray:
    """``x`` as a C-contiguous integer array the native core accepts, in ``[0, n_features)``."""
    arr = as_numpy(x, name)
    if arr.ndim != ndim:
        raise ShapeError(f"{name} must have {ndim} dimensions, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"{name} must be an integer array, got dtype {arr.dtype}")
    if arr.dtype.type not in _INDEX_DTYPES:
        arr = arr.astype(np.int64)
    arr = np.ascontiguousarray(arr)
    if arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi >= n_features:
            bad = lo if lo < 0 else hi
            raise InputError(f"{name} has value {bad}, outside [0, n_features={n_features})")
    return arr


def check_n_features(n_features: int) -> int:
    if isinstance(n_features, bool) or not isinstance(n_features, (int, np.integer)):
        raise InputError(f"n_features must be an int, got {type(n_features).__name__}")
    if n_features < 0:
        raise InputError(f"n_features must be >= 0, got {n_features}")
    return int(n_features)


def check_top_n(top_n: int) -> int:
    if isinstance(top_n, bool) or not isinstance(top_n, (int, np.integer)) or top_n < 0:
        raise InputError(f"top_n must be an int >= 0, got {top_n!r}")
    return int(top_n)
