"""Thin helpers over ``torch.distributed`` that are no-ops in a single process."""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sums ``tensor`` over ranks in place (returns it)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Concatenates every rank's ``[n_i, d]`` rows (ranks may hold different n_i)."""
    if not is_distributed():
        return x
    sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(world_size())]
    dist.all_gather(sizes, torch.tensor([x.shape[0]], dtype=torch.int64))
    longest = int(max(int(s) for s in sizes))
    padded = x.new_zeros((longest, *x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(s)] for p, s in zip(parts, sizes)])


def all_reduce_min_(tensor: torch.Tensor) -> torch.Tensor:
    """Minimum of ``tensor`` over ranks, in place (returns it)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return tensor


def total_rows(n_local: int) -> int:
    """Rows on all ranks together (``n_local`` in a single process)."""
    if not is_distributed():
        return n_local
    return int(all_reduce_sum_(torch.tensor([n_local], dtype=torch.int64))[0])
