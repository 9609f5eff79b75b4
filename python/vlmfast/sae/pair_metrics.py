"""Per-pair downstream quantities of a two-tower model's pair logits, and their bootstrap.

From an ``[n, n]`` matrix of pair logits (image ``i`` x caption ``j``, caption ``i`` the
match of image ``i``), as the model computes them (``exp(logit_scale) * cos`` plus, for
SigLIP, ``logit_bias``):

- :func:`pair_losses`: each pair's share of the model's contrastive training loss, in
  nats: CLIP's symmetric cross-entropy ``(CE(row i) + CE(column i)) / 2``, or SigLIP's
  sigmoid loss summed over image ``i``'s row (the mean over pairs is the batch loss);
- :func:`caption_kl`: ``KL(p_clean || p_other)`` per image, where ``p`` is the image's
  softmax distribution over the captions (a temperature changes it; a bias does not);
- :func:`top1_hits`: whether each image's own caption has the largest logit;
- :func:`bootstrap_means` / :func:`bootstrap_recovered`: percentile intervals from
  resampling the pairs (the same resamples for every quantity).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

LOSSES = ("softmax", "sigmoid")
"""The contrastive losses: ``softmax`` (CLIP, InfoNCE) and ``sigmoid`` (SigLIP)."""


@dataclass
class Estimate:
    """A statistic and its bootstrap interval; ``value`` None: undefined (a 0 denominator)."""

    value: float | None
    """The statistic on all pairs (None: undefined)."""
    ci: tuple[float, float] | None
    """Percentile bootstrap interval at the result's level (None: undefined or < 2 pairs)."""

    def to_dict(self) -> dict[str, object]:
        return {"value": self.value, "ci": None if self.ci is None else list(self.ci)}


def pair_losses(logits: torch.Tensor, loss: str) -> np.ndarray:
    """Float64 ``[n]``: each matched pair's share of the contrastive loss (nats).

    Raises ``ValueError`` for a non-square matrix or an unknown ``loss``.
    """
    if logits.ndim != 2 or logits.shape[0] != logits.shape[1]:
        raise ValueError(f"pair logits must be square [n, n], got {list(logits.shape)}")
    z = logits.detach().double().cpu()
    n = z.shape[0]
    target = torch.arange(n)
    if loss == "softmax":
        rows = F.cross_entropy(z, target, reduction="none")
        cols = F.cross_entropy(z.T, target, reduction="none")
        return ((rows + cols) / 2).numpy()
    if loss == "sigmoid":
        sign = 2 * torch.eye(n, dtype=z.dtype) - 1
        return (-F.logsigmoid(sign * z)).sum(1).numpy()
    raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")


def caption_kl(clean: torch.Tensor, other: torch.Tensor) -> np.ndarray:
    """Float64 ``[n]``: ``KL(softmax(clean[i]) || softmax(other[i]))`` per image (nats, >= 0)."""
    log_p = F.log_softmax(clean.detach().double().cpu(), dim=1)
    log_q = F.log_softmax(other.detach().double().cpu(), dim=1)
    kl = (log_p.exp() * (log_p - log_q)).sum(1)
    return kl.clamp_min(0.0).numpy()


def top1_hits(logits: torch.Tensor) -> np.ndarray:
    """Float64 ``[n]``: 1 where image ``i``'s largest logit is its own caption ``i``."""
    z = logits.detach().cpu()
    return (z.argmax(1) == torch.arange(z.shape[0])).double().numpy()


def resample_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    """``[n_boot, n]`` int64 indices of pairs drawn with replacement."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, n, size=(n_boot, n)) if n else np.zeros((n_boot, 0), np.int64)


def _interval(samples: np.ndarray, level: float) -> tuple[float, float] | None:
    samples = samples[np.isfinite(samples)]
    if samples.size < 2:
        return None
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(samples, [tail, 100 - tail])
    return (float(lo), float(hi))


def bootstrap_means(values: np.ndarray, draws: np.ndarray, level: float) -> Estimate:
    """The mean of per-pair ``values`` and its percentile interval over ``draws``."""
    if values.size == 0:
        return Estimate(None, None)
    ci = _interval(values[draws].mean(1), level) if values.size > 1 else None
    return Estimate(float(values.mean()), ci)


def recovered(clean: float, spliced: float, ablated: float, min_effect: float) -> float | None:
    """``(ablated - spliced) / (ablated - clean)``; None when ``|ablated - clean| <= min_effect``."""
    den = ablated - clean
    if not math.isfinite(den) or abs(den) <= min_effect:
        return None
    return float((ablated - spliced) / den)


def bootstrap_recovered(
    clean: np.ndarray,
    spliced: np.ndarray,
    ablated: np.ndarray,
    draws: np.ndarray,
    level: float,
    min_effect: float,
) -> Estimate:
    """Loss recovered from per-pair losses, with its interval over ``draws``.

    Undefined (``Estimate(None, None)``) when the mean-ablation effect on all pairs is
    within ``min_effect``; resamples whose own effect is that small are left out of the
    interval.
    """
    point = (
        recovered(clean.mean(), spliced.mean(), ablated.mean(), min_effect) if clean.size else None
    )
    if point is None:
        return Estimate(None, None)
    c, s, a = clean[draws].mean(1), spliced[draws].mean(1), ablated[draws].mean(1)
    den = a - c
    ok = np.abs(den) > min_effect
    ratios = np.full(den.shape, np.nan)
    ratios[ok] = (a[ok] - s[ok]) / den[ok]
    return Estimate(point, _interval(ratios, level))
