"""Type stub of the Rust extension ``vlmfast._native`` (checked by mypy.stubtest in ``make lint``)."""

from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "__version__",
    "score_dense_units",
    "score_sparse_codes",
    "score_sparse_triplets",
    "worker_threads",
]

__version__: str

def worker_threads() -> int:
    """Number of worker threads the native core uses for parallel work."""

def score_sparse_codes(
    indices: npt.NDArray[np.integer[Any]],
    values: npt.NDArray[np.float32],
    labels: npt.NDArray[np.bool_],
    n_features: int,
    *,
    stats: bool = False,
    with_se: bool = False,
    top_n: int = 0,
) -> dict[str, Any]:
    """Exact AUROC (and optional statistics) of top-k codes against concept labels."""

def score_sparse_triplets(
    rows: npt.NDArray[np.int64],
    indices: npt.NDArray[np.int64],
    values: npt.NDArray[np.float32],
    labels: npt.NDArray[np.bool_],
    n_features: int,
    *,
    stats: bool = False,
    with_se: bool = False,
    top_n: int = 0,
) -> dict[str, Any]:
    """Exact AUROC (and optional statistics) of COO triplets ``(rows, indices, values)``."""

def score_dense_units(
    scores: npt.NDArray[np.float32],
    labels: npt.NDArray[np.bool_],
    *,
    stats: bool = False,
    with_se: bool = False,
    top_n: int = 0,
) -> dict[str, Any]:
    """Exact AUROC (and optional statistics) of every column of ``scores[N, F]``."""
