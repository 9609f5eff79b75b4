"""Geometric median by Weiszfeld iterations (the b_dec initialisation of OpenAI's SAEs)."""

from __future__ import annotations

import torch


def geometric_median(
    points: torch.Tensor, *, max_iter: int = 100, tol: float = 1e-7
) -> torch.Tensor:
    """Returns the point ``[d]`` (float64) minimising the sum of Euclidean distances to the
    rows of ``points [N, d]``.

    Float64 Weiszfeld iterations from the mean; distances are clamped away from zero
    so an iterate landing on a data point does not divide by zero.
    """
    x = points.double()
    median = x.mean(0)
    for _ in range(max_iter):
        dist = (x - median).norm(dim=1).clamp_min(1e-12)
        weights = 1.0 / dist
        updated = (weights[:, None] * x).sum(0) / weights.sum()
        shift = float((updated - median).norm())
        median = updated
        if shift <= tol * max(1.0, float(median.norm())):
            break
    return median
