"""BatchTopK's batch selection: the flat positions of the ``K`` largest entries of a matrix.

The specification (:func:`batch_topk_positions_reference`) is a stable descending sort of
the flattened matrix: the ``K`` first entries win, so among entries equal to the ``K``-th
largest value the lowest flat positions (row-major: earlier rows, then lower latents)
win. :func:`batch_topk_positions` computes the same set without ranking the whole
matrix: a strided sample gives a value ``h`` that about ``2K`` entries clear, one
compare-and-compact pass keeps the entries ``>= h``, and the selection runs on those.
It is exact whenever at least ``K`` entries clear ``h`` (then the ``K``-th largest value
is ``>= h``, so every entry that can win is kept); otherwise it ranks the whole matrix.
"""

from __future__ import annotations

import torch

_SAMPLE = 1 << 17
"""Entries sampled to place the candidate cut (about 131k: ~2 ms of ranking)."""
_SMALL = 1 << 16
"""Matrices up to this many entries are ranked whole (sampling would not pay)."""


def batch_topk_positions_reference(pre: torch.Tensor, k_total: int) -> torch.Tensor:
    """Returns the ascending flat positions of the ``k_total`` largest entries of ``pre``
    (ties: lowest position first), by one stable sort: the specification of :func:`batch_topk_positions`."""
    order = torch.sort(pre.reshape(-1), descending=True, stable=True).indices
    return order[:k_total].sort().values


def _top_of(values: torch.Tensor, positions: torch.Tensor, k_total: int) -> torch.Tensor:
    """Ascending positions of the ``k_total`` largest ``values`` (ties: lowest position).

    ``positions`` are the distinct flat positions of ``values``; ``k_total <= len``.
    """
    if k_total >= values.numel():
        return positions.sort().values
    kth = torch.kthvalue(values, values.numel() - k_total + 1).values
    above = values > kth
    need = k_total - int(above.sum())
    tied = positions[values == kth]
    if tied.numel() > need:
        tied = tied.sort().values[:need]
    return torch.cat([positions[above], tied]).sort().values


def _sample_cut(flat: torch.Tensor, k_total: int) -> torch.Tensor:
    """A value about ``2 * k_total`` entries of ``flat`` clear, from a strided sample.

    The stride is odd, so with a power-of-two row width the sample visits every latent.
    """
    stride = max(1, flat.numel() // _SAMPLE) | 1
    sample = flat[::stride]
    want = min(sample.numel(), -(-2 * k_total * sample.numel() // flat.numel()) + 8)
    return torch.kthvalue(sample, sample.numel() - want + 1).values


def batch_topk_positions(pre: torch.Tensor, k_total: int) -> torch.Tensor:
    """Returns the ascending flat positions of the ``k_total`` largest entries of ``pre``
    (ties: lowest position first; see the module docstring). ``0 <= k_total <= pre.numel()``."""
    flat = pre.reshape(-1)
    if k_total == 0:
        return torch.zeros(0, dtype=torch.int64, device=pre.device)
    if flat.numel() > _SMALL and 8 * k_total < flat.numel():
        keep = (flat >= _sample_cut(flat, k_total)).nonzero().squeeze(1)
        if keep.numel() >= k_total:
            return _top_of(flat[keep], keep, k_total)
    positions = torch.arange(flat.numel(), device=pre.device)
    return _top_of(flat, positions, k_total)


__all__ = ["batch_topk_positions", "batch_topk_positions_reference"]
