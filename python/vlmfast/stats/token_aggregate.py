"""Per-sample aggregation of token rows (max or mean over each sample's rows), and the
sample order a token stream defines. Semantics in :mod:`vlmfast.stats.tokens`."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from vlmfast.errors import InputError
from vlmfast.stats.inputs import as_numpy, check_n_features
from vlmfast.stats.token_inputs import check_codes, check_dense, check_mode, check_sample_ids


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
        """Returns the sample (0..S-1) of every stored entry, ``int64[nnz]``."""
        return np.repeat(np.arange(self.n_samples, dtype=np.int64), np.diff(self.indptr))

    def to_dense(self) -> npt.NDArray[np.float32]:
        """Returns the dense ``float32[S, n_features]`` matrix (small inputs only)."""
        out = np.zeros((self.n_samples, self.n_features), dtype=np.float32)
        out[self.rows(), self.indices] = self.values
        return out


def token_samples(chunks: Callable[[], Iterable[Any]]) -> npt.NDArray[np.int64]:
    """Returns the distinct sample ids of a token stream in order of first appearance: the
    order ``labels`` must follow for the ``score_*_token_chunks`` functions.

    Reads only each chunk's ``sample_ids`` (its first element) and checks that
    every sample's rows are contiguous, with the same error as the scorers.

    Raises:
        InputError: a sample's token rows are not contiguous (or ``sample_ids`` is bad).
    """
    out: list[npt.NDArray[np.int64]] = []
    seen: set[int] = set()
    last: int | None = None
    row0 = 0
    for i, chunk in enumerate(chunks()):
        ids = as_numpy(chunk[0], "sample_ids")
        sid = check_sample_ids(ids, ids.shape[0] if ids.ndim else -1, f"chunk {i}: ")
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
    """Returns the per-sample max / mean of dense token rows ``x[n, d]``.

    Returns ``(samples int64[S], float32[S, d])``, samples in order of first
    appearance (their rows must be contiguous). NaN in ``x`` is an error.
    """
    sid, arr = check_dense((sample_ids, x))
    samples, out = _native().aggregate_dense_tokens(sid, arr, check_mode(mode))
    return samples, out


def aggregate_sparse_tokens(
    sample_ids: Any, indices: Any, values: Any, n_features: int, mode: str = "max"
) -> SparseRows:
    """Returns the per-sample max / mean of top-k token codes ``(indices[n, k], values[n, k])``,
    as :class:`SparseRows`.

    The merge of the rows' sparse codes: a feature absent from a token row is 0
    there; a feature no row of a sample lists is 0 (not stored) for that sample.
    A feature listed twice in one token row, an index outside ``[0, n_features)``
    and NaN are errors.
    """
    n_features = check_n_features(n_features)
    sid, idx, vals = check_codes((sample_ids, indices, values))
    samples, indptr, ind, val = _native().aggregate_sparse_tokens(
        sid, idx, vals, n_features, check_mode(mode)
    )
    return SparseRows(samples, indptr, ind, val, n_features)
