"""Conversions between user arrays (numpy / torch) and the byte views the native store takes.

bfloat16 has no numpy dtype: it crosses as a 16-bit integer view and comes
back to Python as ``torch.bfloat16``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from vlmfast.errors import InputError

# store dtype name -> numpy dtype of the buffer that carries it
NUMPY_CARRIER: dict[str, np.dtype[Any]] = {
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(np.uint16),
    "int64": np.dtype(np.int64),
    "int32": np.dtype(np.int32),
    "uint8": np.dtype(np.uint8),
    "bool": np.dtype(np.bool_),
}

TORCH_DTYPE: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "int64": torch.int64,
    "int32": torch.int32,
    "uint8": torch.uint8,
    "bool": torch.bool,
}

ACT_DTYPES = ("float32", "float16", "bfloat16")


def dtype_name(dtype: str | torch.dtype | np.dtype[Any] | type) -> str:
    """The store name (``float16`` ...) of a torch or numpy dtype or a name."""
    if isinstance(dtype, torch.dtype):
        for name, td in TORCH_DTYPE.items():
            if td == dtype:
                return name
        raise InputError(f"dtype {dtype} is not supported by the store")
    if isinstance(dtype, str) and dtype in NUMPY_CARRIER:
        return dtype
    try:
        npd = np.dtype(dtype)
    except TypeError as err:
        raise InputError(f"dtype {dtype!r} is not supported by the store") from err
    if npd.name == "bfloat16":  # ml_dtypes
        return "bfloat16"
    for name, carrier in NUMPY_CARRIER.items():
        if carrier == npd and name != "bfloat16":
            return name
    raise InputError(f"dtype {npd} is not supported by the store")


def to_carrier(data: Any, store_dtype: str, what: str) -> np.ndarray:
    """A C-contiguous numpy array of the carrier dtype holding ``data``, which must
    already have ``store_dtype`` (no silent casts). bfloat16 accepts a torch
    bfloat16 tensor, an ml_dtypes bfloat16 array or a uint16 view."""
    if isinstance(data, torch.Tensor):
        t = data.detach()
        got = dtype_name(t.dtype) if t.dtype in TORCH_DTYPE.values() else str(t.dtype)
        if got != store_dtype:
            raise InputError(
                f"{what}: dtype {t.dtype} does not match the store's {store_dtype}; "
                f"convert it first (e.g. .to(torch.{store_dtype}))"
            )
        t = t.cpu().contiguous()
        if store_dtype == "bfloat16":
            return t.view(torch.int16).numpy().view(np.uint16)
        return t.numpy()
    arr = np.asarray(data)
    carrier = NUMPY_CARRIER[store_dtype]
    if store_dtype == "bfloat16":
        if arr.dtype.name == "bfloat16" or arr.dtype in (np.dtype(np.uint16), np.dtype(np.int16)):
            return np.ascontiguousarray(arr).view(np.uint16)
    elif arr.dtype == carrier:
        return np.ascontiguousarray(arr)
    raise InputError(
        f"{what}: dtype {arr.dtype} does not match the store's {store_dtype}; convert it first"
    )


def as_bytes(arr: np.ndarray) -> np.ndarray:
    """A uint8 view of a C-contiguous array (its rows as bytes)."""
    flat = np.ascontiguousarray(arr)
    if flat.ndim == 0:
        flat = flat.reshape(1)
    return flat.reshape(flat.shape[0], -1).view(np.uint8) if flat.size else flat.view(np.uint8)


def to_torch(arr: np.ndarray, store_dtype: str) -> torch.Tensor:
    """A torch tensor sharing ``arr``'s memory (bfloat16 re-viewed from uint16)."""
    if store_dtype == "bfloat16":
        return torch.from_numpy(arr.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(arr)
