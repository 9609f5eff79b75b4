"""Type stub of the Rust extension ``vlmfast._native`` (checked by mypy.stubtest in ``make lint``)."""

from typing import Any, final

import numpy as np
import numpy.typing as npt

__all__ = [
    "PAIR_MOMENTS",
    "DenseTokenScorer",
    "PairMoments",
    "ShuffleStream",
    "SparseTokenScorer",
    "StoreArray",
    "__version__",
    "aggregate_dense_tokens",
    "aggregate_sparse_tokens",
    "score_dense_units",
    "score_shared_codes",
    "score_sparse_codes",
    "score_sparse_triplets",
    "store_create_array",
    "store_mark_committed",
    "store_node_exists",
    "store_nonfinite_rows",
    "store_open_array",
    "store_prepare_commit",
    "store_read_group_attrs",
    "store_write_group",
    "worker_threads",
]

__version__: str

def worker_threads() -> int:
    """Number of worker threads the native core uses for parallel work."""

@final
class StoreArray:
    """One store array (`acts/<hook>`, `index/<hook>/sample`, ...), open for reading or appending."""

    def append(self, data: npt.NDArray[np.uint8]) -> None: ...
    def write_at(self, start: int, data: npt.NDArray[np.uint8], end_of_array: bool) -> None: ...
    def adopt_written(self, rows: int) -> None: ...
    def read_into(self, start: int, stop: int, out: npt.NDArray[np.uint8]) -> None: ...
    @property
    def name(self) -> str: ...
    @property
    def root(self) -> str: ...
    @property
    def dtype(self) -> str: ...
    @property
    def width(self) -> int | None: ...
    @property
    def chunk_rows(self) -> int: ...
    @property
    def committed(self) -> int: ...
    @property
    def written(self) -> int: ...

@final
class ShuffleStream:
    """Shuffled (or ordered) fixed-size batches of one array's committed rows."""

    def __new__(
        cls,
        root: str,
        name: str,
        committed: int,
        batch_size: int,
        shuffle: bool,
        seed: int,
        epoch: int,
        start_batch: int,
        window_chunks: int,
        prefetch: int,
        drop_last: bool,
    ) -> ShuffleStream: ...
    def next_len(self) -> int: ...
    def next_into(self, out: npt.NDArray[np.uint8]) -> int: ...
    @property
    def row_bytes(self) -> int: ...

def store_create_array(
    root: str,
    name: str,
    dtype: str,
    width: int | None,
    chunk_rows: int,
    compression: str = "none",
    level: int = 3,
    inner_rows: int | None = None,
    dims: list[str] | None = None,
) -> StoreArray:
    """Creates an empty array `name` in the store at `root` (`dims`: its zarr dimension names)."""

def store_open_array(root: str, name: str, committed: int, writable: bool) -> StoreArray:
    """Opens array `name` with `committed` rows; `writable` prepares appends."""

def store_write_group(root: str, path: str, attrs_json: str) -> None:
    """Writes (atomically, durably) the group node `path` with attributes `attrs_json`."""

def store_read_group_attrs(root: str, path: str) -> str:
    """The attributes (JSON text) of the group at `path`."""

def store_node_exists(root: str, path: str) -> bool:
    """Whether a zarr node exists at `path`."""

def store_nonfinite_rows(data: npt.NDArray[np.uint8], dtype: str, width: int) -> list[int]:
    """Row indices (in `data`, rows of `width` elements of `dtype`) holding NaN or Inf."""

def store_prepare_commit(arrays: list[StoreArray], rows: list[int]) -> None:
    """First half of a commit: stages every array's partial chunk and new shape
    (`rows[i]` rows), then makes all of it durable in one parallel fsync pass."""

def store_mark_committed(arrays: list[StoreArray], rows: list[int]) -> None:
    """Second half of a commit, after the commit point: `rows[i]` rows of `arrays[i]` are committed."""

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

def aggregate_sparse_tokens(
    sample_ids: npt.NDArray[np.int64],
    indices: npt.NDArray[np.integer[Any]],
    values: npt.NDArray[np.float32],
    n_features: int,
    mode: str,
) -> tuple[
    npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int32], npt.NDArray[np.float32]
]:
    """Per-sample max / mean of top-k token codes: `(samples, indptr, indices, values)` (CSR)."""

def aggregate_dense_tokens(
    sample_ids: npt.NDArray[np.int64], x: npt.NDArray[np.float32], mode: str
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """Per-sample max / mean of dense token rows: `(samples, float32[samples, d])`."""

@final
class SparseTokenScorer:
    """One streaming pass of token-aggregated scoring of top-k codes over the
    features `[lo, hi)`; `memory_budget` (bytes) may narrow `hi` during the pass."""

    def __new__(
        cls,
        n_features: int,
        lo: int,
        hi: int,
        mode: str,
        n_samples: int,
        memory_budget: int | None = None,
    ) -> SparseTokenScorer: ...
    def push(
        self,
        sample_ids: npt.NDArray[np.int64],
        indices: npt.NDArray[np.integer[Any]],
        values: npt.NDArray[np.float32],
    ) -> None: ...
    def finish(self) -> None: ...
    @property
    def hi(self) -> int: ...
    @property
    def nbytes(self) -> int: ...
    def samples(self) -> npt.NDArray[np.int64]: ...
    def score(
        self,
        labels: npt.NDArray[np.bool_],
        *,
        stats: bool = False,
        with_se: bool = False,
        top_n: int = 0,
    ) -> dict[str, Any]: ...

@final
class DenseTokenScorer:
    """One streaming pass of token-aggregated scoring of dense units over the
    columns `[lo, hi)` (`hi` clipped to the rows' width)."""

    def __new__(cls, lo: int, hi: int, mode: str, n_samples: int) -> DenseTokenScorer: ...
    def push(self, sample_ids: npt.NDArray[np.int64], x: npt.NDArray[np.float32]) -> None: ...
    def finish(self) -> None: ...
    @property
    def d(self) -> int | None: ...
    def samples(self) -> npt.NDArray[np.int64]: ...
    def take_rows(self) -> npt.NDArray[np.float32]: ...
    def score(
        self,
        labels: npt.NDArray[np.bool_],
        *,
        stats: bool = False,
        with_se: bool = False,
        top_n: int = 0,
    ) -> dict[str, Any]: ...

PAIR_MOMENTS: list[str]

@final
class PairMoments:
    """Per-feature moments of matched image/caption top-k codes, streamed."""

    def __new__(cls, n_features: int) -> PairMoments: ...
    def push(
        self,
        image_indices: npt.NDArray[np.int64],
        image_values: npt.NDArray[np.float32],
        text_indices: npt.NDArray[np.int64],
        text_values: npt.NDArray[np.float32],
    ) -> None: ...
    @property
    def pairs(self) -> int: ...
    def sums(self) -> npt.NDArray[np.float64]: ...

def score_shared_codes(
    image_indices: npt.NDArray[np.int64],
    image_values: npt.NDArray[np.float32],
    text_indices: npt.NDArray[np.int64],
    text_values: npt.NDArray[np.float32],
    image_labels: npt.NDArray[np.bool_],
    text_labels: npt.NDArray[np.bool_],
    n_features: int,
    *,
    with_se: bool = False,
) -> tuple[dict[str, Any], dict[str, Any], npt.NDArray[np.float64], int]:
    """Both modalities' exact AUROC tables (optionally DeLong SEs) and the pairs'
    moment sums in one call: `(image scores, text scores, sums[F, 14], pairs)`."""
