"""Training losses of a top-k SAE: normalised reconstruction error and AuxK."""

from __future__ import annotations

import torch


def _total_variance(x: torch.Tensor) -> torch.Tensor:
    """``sum ||x_n - mean(x)||^2`` over the batch (the per-dimension mean), clamped > 0."""
    return (x - x.mean(0, keepdim=True)).pow(2).sum().clamp_min(1e-12)


def fvu_loss(
    x: torch.Tensor, recon: torch.Tensor, total_variance: torch.Tensor | None = None
) -> torch.Tensor:
    """Returns the fraction of variance unexplained in the batch (a 0-dim tensor, 0 for a
    perfect reconstruction): ``sum ||x - recon||^2 / sum ||x - mean||^2``.

    Scale-free, so one learning rate works across hooks with very different norms.
    ``total_variance`` overrides the denominator (data-parallel runs pass the global one).
    """
    denom = _total_variance(x) if total_variance is None else total_variance
    return (recon - x).pow(2).sum() / denom.to(x.dtype)


def auxk_loss(
    residual: torch.Tensor, aux_recon: torch.Tensor, total_variance: torch.Tensor | None = None
) -> torch.Tensor:
    """Returns the AuxK loss (a 0-dim tensor, in FVU units): how well dead latents
    reconstruct the main reconstruction's error.

    ``residual`` is ``x - recon``; it is detached here, so the loss trains only the
    dead latents and never pulls the main reconstruction towards the residual.
    ``aux_recon`` must not contain ``b_dec`` (the residual has it already): adding it
    again is the bug several public trainers share.
    """
    target = residual.detach()
    denom = _total_variance(target) if total_variance is None else total_variance
    return (aux_recon - target).pow(2).sum() / denom.to(target.dtype)
