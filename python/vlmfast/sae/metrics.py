"""Running SAE metrics from float64 sums: FVU, MSE, L0, dead/dense fractions, firing histogram."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class RunningMetrics:
    """Accumulates reconstruction and sparsity statistics over many batches.

    FVU uses the per-dimension mean of all rows seen: ``sum ||x - x_hat||^2 /
    sum ||x - mu||^2`` with ``sum ||x - mu||^2 = sum x^2 - n * ||mu||^2`` from
    float64 running sums (variance about zero, or a per-batch mean, inflates it).
    """

    d_in: int
    n_latents: int
    n_rows: int = 0
    sum_x: torch.Tensor = field(init=False)
    sum_x2: torch.Tensor = field(init=False)
    sum_err2: float = 0.0
    sum_l0: float = 0.0
    fire_counts: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.n_rows = 0
        self.sum_x = torch.zeros(self.d_in, dtype=torch.float64)
        self.sum_x2 = torch.zeros(self.d_in, dtype=torch.float64)
        self.sum_err2 = 0.0
        self.sum_l0 = 0.0
        self.fire_counts = torch.zeros(self.n_latents, dtype=torch.int64)

    @torch.no_grad()
    def update(
        self, x: torch.Tensor, recon: torch.Tensor, values: torch.Tensor, indices: torch.Tensor
    ) -> None:
        x64 = x.detach().double().cpu()
        self.n_rows += x64.shape[0]
        self.sum_x += x64.sum(0)
        self.sum_x2 += x64.pow(2).sum(0)
        self.sum_err2 += float((recon.detach().double().cpu() - x64).pow(2).sum())
        active = values.detach() > 0
        self.sum_l0 += float(active.sum())
        fired = indices.detach()[active].cpu()
        self.fire_counts += torch.bincount(fired, minlength=self.n_latents)

    def merge_(self, other: RunningMetrics) -> None:
        """Adds another accumulator's sums (e.g. from another rank)."""
        self.n_rows += other.n_rows
        self.sum_x += other.sum_x
        self.sum_x2 += other.sum_x2
        self.sum_err2 += other.sum_err2
        self.sum_l0 += other.sum_l0
        self.fire_counts += other.fire_counts

    def all_reduce_(self) -> None:
        """Sums the accumulators over data-parallel ranks (no-op in one process)."""
        from vlmfast.sae import distributed as ddp

        if not ddp.is_distributed():
            return
        scalars = torch.tensor(
            [float(self.n_rows), self.sum_err2, self.sum_l0], dtype=torch.float64
        )
        for t in (scalars, self.sum_x, self.sum_x2, self.fire_counts):
            ddp.all_reduce_sum_(t)
        self.n_rows = int(scalars[0])
        self.sum_err2 = float(scalars[1])
        self.sum_l0 = float(scalars[2])

    def total_variance(self) -> float:
        """Returns the summed variance of the inputs over all dimensions (NaN without rows)."""
        if self.n_rows == 0:
            return float("nan")
        mu = self.sum_x / self.n_rows
        return float((self.sum_x2 - self.n_rows * mu.pow(2)).sum())

    def fvu(self) -> float:
        """Returns the fraction of variance unexplained (NaN when the inputs are constant)."""
        var = self.total_variance()
        return self.sum_err2 / var if var > 0 else float("nan")

    def mse(self) -> float:
        """Returns the mean squared error per element."""
        return self.sum_err2 / max(1, self.n_rows * self.d_in)

    def l0(self) -> float:
        """Returns the mean number of active latents per row."""
        return self.sum_l0 / max(1, self.n_rows)

    def firing_frequency(self) -> torch.Tensor:
        """Returns each latent's firing frequency ``[n_latents]``: a fraction of rows in [0, 1]."""
        return self.fire_counts.double() / max(1, self.n_rows)

    def dead_fraction(self) -> float:
        """Returns the fraction of latents (in [0, 1]) that never fired in the rows seen."""
        return float((self.fire_counts == 0).double().mean())

    def dense_fraction(self, threshold: float = 0.1) -> float:
        """Returns the fraction of latents (in [0, 1]) firing on more than ``threshold`` of rows."""
        return float((self.firing_frequency() > threshold).double().mean())

    def firing_histogram(self, bins: int = 20, low: float = -8.0) -> dict[str, list[float]]:
        """Returns the histogram of log10 firing frequency (``log10_edges``, ``counts`` in
        latents); never-firing latents go in the lowest bin."""
        freq = self.firing_frequency().clamp_min(10.0**low)
        counts = torch.histc(freq.log10(), bins=bins, min=low, max=0.0)
        edges = torch.linspace(low, 0.0, bins + 1)
        return {"log10_edges": edges.tolist(), "counts": counts.tolist()}

    def summary(self) -> dict[str, float]:
        """Returns FVU, MSE, L0 (latents per row), dead and dense fractions and rows."""
        return {
            "fvu": self.fvu(),
            "mse": self.mse(),
            "l0": self.l0(),
            "dead_frac": self.dead_fraction(),
            "dense_frac": self.dense_fraction(),
            "rows": float(self.n_rows),
        }
