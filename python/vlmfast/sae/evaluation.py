"""Reconstruction metrics of an SAE on held-out rows, streamed, optionally by token type.

from vlmfast.sae import evaluate      # the function; this module is vlmfast.sae.evaluation
result = evaluate(sae, rows, labels=token_types)   # rows [N, d]; labels: N strings or None
result.overall.fvu, result.by_type["patch"].l0_mean, result.to_dict()

Works for any SAE with ``encode`` / ``decode``: either ``encode(x) -> (values [N, k],
indices [N, k])`` with ``decode(values, indices)`` (:class:`~vlmfast.sae.TopKSAE`), or
``encode(x) -> codes [N, n_latents]`` with ``decode(codes)``. The sums behind FVU, L0 and
firing counts are streamed in :mod:`vlmfast.sae.eval_accumulator` (float64 sums of float32
row reductions; FVU against the per-dimension mean of the rows evaluated, the variance
merged batch by batch). The null of FVU is mean ablation: FVU 1 (EV 0). The downstream
(spliced-logit) metrics are :mod:`vlmfast.sae.downstream`; both together:
:func:`vlmfast.sae.evaluate_suite`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from vlmfast.errors import InputError, ShapeError
from vlmfast.sae.eval_accumulator import Accumulator, update_batch
from vlmfast.scoring.selectivity import wilson_interval
from vlmfast.stats.significance import z_for_level


def n_latents_of(sae: Any) -> int:
    """The SAE's dictionary size: ``sae.n_latents``, else the rows of ``sae.W_dec``."""
    n = getattr(sae, "n_latents", None)
    if n is None:
        w_dec = getattr(sae, "W_dec", None)
        if w_dec is None:
            raise InputError("SAE has neither n_latents nor W_dec: cannot size its dictionary")
        n = w_dec.shape[0]
    return int(n)


def encode_codes(sae: Any, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """``(values [N, k], indices [N, k], sparse)`` of ``sae.encode(x)``.

    A dense encoder's ``[N, n_latents]`` codes come back as ``values`` with ``indices`` =
    ``arange(n_latents)`` for every row and ``sparse=False``. Raises :class:`ShapeError`
    when the codes have the wrong number of rows.
    """
    out = sae.encode(x)
    if isinstance(out, tuple):
        values, indices = out[0], out[1]
        sparse = True
    else:
        values = out
        indices = torch.arange(values.shape[-1], device=values.device).expand_as(values)
        sparse = False
    if values.ndim != 2 or values.shape[0] != x.shape[0] or values.shape != indices.shape:
        raise ShapeError(
            f"SAE codes for input {list(x.shape)}: values {list(values.shape)}, indices"
            f" {list(indices.shape)}; expected both [{x.shape[0]}, k]"
        )
    return values, indices, sparse


def dense_codes(sae: Any, x: torch.Tensor, n_latents: int) -> torch.Tensor:
    """``[N, n_latents]`` float32 codes of ``sae.encode(x)`` (zeros where a latent is off)."""
    values, indices, _ = encode_codes(sae, x)
    out = torch.zeros(x.shape[0], n_latents, dtype=torch.float32, device=values.device)
    return out.scatter_(1, indices.long(), values.float())


@dataclass
class ReconstructionMetrics:
    """The reconstruction suite on one set of rows (see :func:`evaluate`)."""

    n_rows: int
    """Rows evaluated."""
    n_latents: int
    """Dictionary size."""
    fvu: float
    """``sum ||x - x_hat||^2 / sum ||x - mean||^2`` (NaN with no variance or no rows)."""
    explained_variance: float
    """``1 - fvu``."""
    mse: float
    """Mean squared error per coordinate."""
    cosine_mean: float
    """Mean over rows of cos(x, x_hat), on the raw rows (a zero row or reconstruction: 0)."""
    cosine_ci: tuple[float, float]
    """Normal interval of ``cosine_mean`` at ``level`` (from the per-row spread)."""
    l0_mean: float
    """Mean number of active latents (value > 0) per row."""
    l0_ci: tuple[float, float]
    """Normal interval of ``l0_mean`` at ``level``."""
    l0_histogram: dict[str, list[int]]
    """``{"l0": [0, 1, ...], "counts": [...]}``: rows with each number of active latents."""
    dead_fraction: float
    """Latents that never fire on these rows."""
    dead_ci: tuple[float, float]
    """Wilson interval of ``dead_fraction`` over latents."""
    dense_fraction: float
    """Latents firing on more than ``dense_threshold`` of the rows."""
    dense_ci: tuple[float, float]
    """Wilson interval of ``dense_fraction``."""
    alive_fraction: float
    """``1 - dead_fraction``."""
    alive_ci: tuple[float, float]
    """Wilson interval of ``alive_fraction``."""
    density_histogram: dict[str, list[float]]
    """Log10 firing-frequency histogram (``RunningMetrics.firing_histogram``)."""
    dense_threshold: float = 0.1
    """Firing frequency above which a latent counts as dense."""
    level: float = 0.95
    """Confidence level of the intervals."""
    null_fvu: float = 1.0
    """FVU of the null (mean ablation: every row reconstructed as the mean)."""

    def to_dict(self) -> dict[str, Any]:
        """Returns the metrics as a plain dict."""
        return asdict(self)


@dataclass
class SAEEvaluation:
    """:func:`evaluate`'s result: all rows, and each token type when labels were given."""

    overall: ReconstructionMetrics
    """Metrics over every row."""
    by_type: dict[str, ReconstructionMetrics] = field(default_factory=dict)
    """Metrics per label (each with its own mean for FVU); empty without labels."""

    def to_dict(self) -> dict[str, Any]:
        """Returns the overall and per-type metrics as plain dicts."""
        return {
            "overall": self.overall.to_dict(),
            "by_type": {key: value.to_dict() for key, value in self.by_type.items()},
        }


def _result(
    acc: Accumulator, dense_threshold: float, bins: int, level: float
) -> ReconstructionMetrics:
    """:class:`ReconstructionMetrics` of an accumulator's sums."""
    n, n_lat = acc.n_rows, acc.n_latents
    fvu = acc.fvu()
    rm = acc.running_metrics()
    dead = int((acc.fire_counts == 0).sum())
    dense = int((rm.firing_frequency() > dense_threshold).sum())
    of = n_lat if n else 0
    return ReconstructionMetrics(
        n_rows=n,
        n_latents=n_lat,
        fvu=fvu,
        explained_variance=1.0 - fvu,
        mse=acc.sum_err2 / (n * acc.d_in) if n else math.nan,
        cosine_mean=acc.sum_cos / n if n else math.nan,
        cosine_ci=_mean_interval(acc.sum_cos, acc.sum_cos2, n, level),
        l0_mean=acc.sum_l0 / n if n else math.nan,
        l0_ci=_mean_interval(acc.sum_l0, acc.sum_l02, n, level),
        l0_histogram={
            "l0": list(range(acc.l0_counts.numel())),
            "counts": [int(c) for c in acc.l0_counts],
        },
        dead_fraction=dead / n_lat if n else math.nan,
        dead_ci=wilson_interval(dead, of, level),
        dense_fraction=dense / n_lat if n else math.nan,
        dense_ci=wilson_interval(dense, of, level),
        alive_fraction=(n_lat - dead) / n_lat if n else math.nan,
        alive_ci=wilson_interval(n_lat - dead, of, level),
        density_histogram=rm.firing_histogram(bins=bins),
        dense_threshold=dense_threshold,
        level=level,
    )


def _mean_interval(total: float, total_sq: float, n: int, level: float) -> tuple[float, float]:
    """Normal interval of a mean from its sum and sum of squares (NaNs for n < 2)."""
    if n < 2:
        return (math.nan, math.nan)
    mean = total / n
    var = max(0.0, (total_sq - n * mean * mean) / (n - 1))
    half = z_for_level(level) * math.sqrt(var / n)
    return (mean - half, mean + half)


def _check_batch(x: torch.Tensor, d_in: int | None, where: str) -> None:
    if x.ndim != 2 or (d_in is not None and x.shape[1] != d_in):
        want = f"[N, {d_in}]" if d_in is not None else "[N, d_in]"
        raise ShapeError(f"evaluate: {where} must be {want}, got {list(x.shape)}")


def _as_labels(labels: Any, n: int, where: str) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ShapeError(
            f"evaluate: labels of {where} must be one per row ({n}), got shape {list(arr.shape)}"
        )
    return arr.astype(str)


def evaluate_batches(
    sae: Any,
    batches: Iterable[torch.Tensor | tuple[torch.Tensor, Sequence[str] | np.ndarray]],
    *,
    dense_threshold: float = 0.1,
    bins: int = 20,
    level: float = 0.95,
) -> SAEEvaluation:
    """Returns the reconstruction suite over a stream of batches (constant memory in the row
    count), as :class:`SAEEvaluation`.

    Each batch is a ``[B, d_in]`` tensor or a ``(rows, labels)`` pair whose ``labels`` give
    each row's token type (e.g. "cls", "patch", "token", "eot"); with labels, the result
    has one :class:`ReconstructionMetrics` per type as well as the overall one. Raises
    :class:`ShapeError` for a batch or label array of the wrong shape and
    :class:`InputError` for a ``dense_threshold`` outside [0, 1].
    """
    if not 0.0 <= dense_threshold <= 1.0:
        raise InputError(f"evaluate: dense_threshold must be in [0, 1], got {dense_threshold}")
    n_lat = n_latents_of(sae)
    d_in: int | None = getattr(sae, "d_in", None)
    overall: Accumulator | None = None
    by_type: dict[str, Accumulator] = {}
    with torch.no_grad():
        for i, item in enumerate(batches):
            x, labels = item if isinstance(item, tuple) else (item, None)
            _check_batch(x, d_in, f"batch {i}")
            if overall is None:
                overall = Accumulator(x.shape[1], n_lat)
            values, indices, sparse = encode_codes(sae, x)
            recon = sae.decode(values, indices) if sparse else sae.decode(values)
            lab = None if labels is None else _as_labels(labels, x.shape[0], f"batch {i}")
            update_batch(overall, by_type, x, recon, values, indices, lab)
    if overall is None:
        overall = Accumulator(d_in or 0, n_lat)
    return SAEEvaluation(
        _result(overall, dense_threshold, bins, level),
        {k: _result(acc, dense_threshold, bins, level) for k, acc in sorted(by_type.items())},
    )


def evaluate(
    sae: Any,
    rows: torch.Tensor | np.ndarray,
    *,
    labels: Sequence[str] | np.ndarray | None = None,
    batch_size: int = 8192,
    dense_threshold: float = 0.1,
    bins: int = 20,
    level: float = 0.95,
) -> SAEEvaluation:
    """Returns the reconstruction suite of ``sae`` on ``rows [N, d_in]`` (held-out rows):
    FVU, L0 (latents per row), cosine, dead / dense / alive fractions, with intervals.

    ``rows`` may be a tensor or a (memory-mapped) numpy array; it is read ``batch_size``
    rows at a time, converted to float32 on the SAE's device. ``labels`` (N strings, or
    None) splits the result by token type. Returns :class:`SAEEvaluation`. Raises
    :class:`ShapeError` when ``rows`` is not 2-D or ``labels`` does not have N entries, and
    :class:`InputError` for a ``batch_size`` below 1.
    """
    if batch_size < 1:
        raise InputError(f"evaluate: batch_size must be >= 1, got {batch_size}")
    if rows.ndim != 2:
        raise ShapeError(f"evaluate: rows must be [N, d_in], got {list(rows.shape)}")
    n = rows.shape[0]
    lab = None if labels is None else _as_labels(labels, n, "rows")
    params = list(sae.parameters()) if hasattr(sae, "parameters") else []
    device = params[0].device if params else torch.device("cpu")

    def batches() -> Iterable[Any]:
        for start in range(0, n, batch_size):
            chunk = rows[start : start + batch_size]
            x = torch.as_tensor(np.asarray(chunk) if isinstance(chunk, np.ndarray) else chunk)
            x = x.to(device=device, dtype=torch.float32)
            yield x if lab is None else (x, lab[start : start + batch_size])

    return evaluate_batches(sae, batches(), dense_threshold=dense_threshold, bins=bins, level=level)
