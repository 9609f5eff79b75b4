"""Streaming sums behind :func:`vlmfast.sae.evaluate`, a few float32 passes per batch.

Per batch, each row's squared error, cosine and L0 are reduced in float32 over the row's
``d`` coordinates and accumulated in float64; the total variance (the FVU denominator)
is merged batch by batch with Chan's parallel formula from each batch's float64 mean and
its centred sum of squares (centring first: no cancellation when the mean is large, as on
CLS rows). Rows of several token types are split once per batch; the overall sums are the
merge of the types' (no second pass).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from vlmfast.sae.metrics import RunningMetrics


@dataclass
class RowStats:
    """One batch's per-row quantities (float64 / int64 on the CPU)."""

    err2: torch.Tensor
    """``||x - x_hat||^2`` per row."""
    cos: torch.Tensor
    """cos(x, x_hat) per row (0 for a zero row or reconstruction)."""
    l0: torch.Tensor
    """Active latents (value > 0) per row."""

    def take(self, rows: torch.Tensor) -> RowStats:
        return RowStats(self.err2[rows], self.cos[rows], self.l0[rows])


def row_stats(x: torch.Tensor, recon: torch.Tensor, values: torch.Tensor) -> RowStats:
    """:class:`RowStats` of a batch (float32 row reductions, returned as float64)."""
    xf, rf = x.detach().float(), recon.detach().float()
    diff = xf - rf
    err2 = torch.einsum("ij,ij->i", diff, diff)
    del diff
    xx = torch.einsum("ij,ij->i", xf, xf).double()
    rr = torch.einsum("ij,ij->i", rf, rf).double()
    xr = (xx + rr - err2.double()) / 2  # <x, x_hat> from the three norms: one pass fewer
    norms = (xx * rr).sqrt()
    cos = torch.where(norms > 0, xr / norms.clamp_min(1e-300), 0.0)
    l0 = (values.detach() > 0).sum(1)
    return RowStats(err2.double().cpu(), cos.cpu(), l0.cpu())


def centred_moments(x: torch.Tensor) -> tuple[int, torch.Tensor, float]:
    """``(n, mean float64 [d], sum ||x - mean||^2)`` of the rows of ``x``."""
    n = x.shape[0]
    xf = x.detach().float()
    pivot = xf.mean(0)
    c = xf - pivot
    shift = c.sum(0).double()
    ss = float(torch.einsum("ij,ij->i", c, c).double().sum())
    mean = pivot.double().cpu() + shift.cpu() / n
    return n, mean, ss - float(shift.pow(2).sum()) / n


@dataclass
class Accumulator:
    """The running sums of the reconstruction suite over one set of rows."""

    d_in: int
    n_latents: int
    n_rows: int = 0
    mean: torch.Tensor = field(init=False)
    m2: float = 0.0
    """Sum over rows of ``||x - mean||^2`` (the FVU denominator)."""
    sum_err2: float = 0.0
    sum_cos: float = 0.0
    sum_cos2: float = 0.0
    sum_l0: float = 0.0
    sum_l02: float = 0.0
    fire_counts: torch.Tensor = field(init=False)
    l0_counts: torch.Tensor = field(default_factory=lambda: torch.zeros(1, dtype=torch.int64))

    def __post_init__(self) -> None:
        self.mean = torch.zeros(self.d_in, dtype=torch.float64)
        self.fire_counts = torch.zeros(self.n_latents, dtype=torch.int64)

    def merge_moments(self, n: int, mean: torch.Tensor, m2: float) -> None:
        """Adds ``n`` rows of mean ``mean`` and centred sum of squares ``m2`` (Chan et al.)."""
        if n == 0:
            return
        total = self.n_rows + n
        delta = mean - self.mean
        self.m2 += m2 + float(delta.pow(2).sum()) * self.n_rows * n / total
        self.mean += delta * (n / total)
        self.n_rows = total

    def add_rows(self, stats: RowStats, fired: torch.Tensor) -> None:
        """Adds per-row stats and the flat indices of the latents that fired."""
        self.sum_err2 += float(stats.err2.sum())
        self.sum_cos += float(stats.cos.sum())
        self.sum_cos2 += float(stats.cos.pow(2).sum())
        self.sum_l0 += float(stats.l0.sum())
        self.sum_l02 += float(stats.l0.double().pow(2).sum())
        self.fire_counts += torch.bincount(fired, minlength=self.n_latents)
        counts = torch.bincount(stats.l0, minlength=self.l0_counts.numel())
        if counts.numel() > self.l0_counts.numel():
            counts[: self.l0_counts.numel()] += self.l0_counts
            self.l0_counts = counts
        else:
            self.l0_counts += counts

    def merge_(self, other: Accumulator) -> None:
        """Adds another accumulator's rows."""
        self.merge_moments(other.n_rows, other.mean, other.m2)
        for key in ("sum_err2", "sum_cos", "sum_cos2", "sum_l0", "sum_l02"):
            setattr(self, key, getattr(self, key) + getattr(other, key))
        self.fire_counts += other.fire_counts
        a, b = self.l0_counts, other.l0_counts
        out = torch.zeros(max(a.numel(), b.numel()), dtype=torch.int64)
        out[: a.numel()] += a
        out[: b.numel()] += b
        self.l0_counts = out

    def fvu(self) -> float:
        return self.sum_err2 / self.m2 if self.n_rows and self.m2 > 0 else math.nan

    def running_metrics(self) -> RunningMetrics:
        """A :class:`RunningMetrics` with these firing counts (for its histogram)."""
        rm = RunningMetrics(self.d_in, self.n_latents)
        rm.n_rows, rm.fire_counts = self.n_rows, self.fire_counts.clone()
        return rm


def update_batch(
    overall: Accumulator,
    by_type: dict[str, Accumulator],
    x: torch.Tensor,
    recon: torch.Tensor,
    values: torch.Tensor,
    indices: torch.Tensor,
    labels: np.ndarray | None,
) -> None:
    """Adds one batch to ``overall`` and, with ``labels``, to each type's accumulator."""
    stats = row_stats(x, recon, values)
    active = values.detach() > 0
    if labels is None:
        overall.merge_moments(*centred_moments(x))
        overall.add_rows(stats, indices.detach()[active].cpu())
        return
    names, codes = np.unique(labels, return_inverse=True)
    for code, name in enumerate(names.tolist()):
        part = Accumulator(overall.d_in, overall.n_latents)
        if len(names) == 1:
            part.merge_moments(*centred_moments(x))
            part.add_rows(stats, indices.detach()[active].cpu())
        else:
            rows = torch.from_numpy(np.flatnonzero(codes == code))
            dev_rows = rows.to(x.device)
            part.merge_moments(*centred_moments(x[dev_rows]))
            part.add_rows(stats.take(rows), indices[dev_rows][active[dev_rows]].cpu())
        by_type.setdefault(name, Accumulator(overall.d_in, overall.n_latents)).merge_(part)
        overall.merge_(part)
