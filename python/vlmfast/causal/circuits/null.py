"""Curves, sparsity and the random-ordering null of circuit discovery.

The null orders the *same* candidate nodes (so the same towers, kinds and layers) by
uniform random permutations drawn from ``torch.Generator().manual_seed(seed)`` and
evaluates each at the observed curve's grid, batched like the observed curve. The
p-value compares sparsities measured on that one grid (the observed curve's refinement
around its crossing is not repeated for every null ordering), with the +1 correction:
``(1 + #{null sparsity <= observed}) / (1 + size)``. ``null_grid`` (``find_circuit``)
evaluates the null on a subset of that grid (``thin_grid``) and reads the observed
sparsity off the same subset: cheaper for big node sets, coarser, and a tie counts
against the observed order, so it only errs conservative.

``bootstrap`` gives the faithfulness interval at the circuit's size, resampling examples.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vlmfast.causal.circuits.result import NullSummary

MIN_NULL_FOR_PVALUE = 20
_KEEP_BUDGET = 1 << 24  # bools of keep masks built at once (rows x nodes)


def log_grid(n_nodes: int, points: int) -> list[int]:
    """``points`` sizes in ``0..n_nodes`` (0 and N included), log-spaced (all when few)."""
    if n_nodes + 1 <= points:
        return list(range(n_nodes + 1))
    m = max(points - 1, 2)
    while True:
        ks = np.unique(np.round(np.geomspace(1, n_nodes, m)).astype(np.int64)).tolist()
        grid = sorted({0, n_nodes, *ks})
        if len(grid) >= points or m > 4 * n_nodes:
            return [int(k) for k in grid]
        m += 1


def thin_grid(grid: Sequence[int], points: int) -> list[int]:
    """``points`` sizes of ``grid`` (its first and last kept), evenly spaced by index.

    The null's grid when ``null_grid`` asks for fewer sizes than the observed curve has:
    a subset, so the observed sparsity can be read off the curve already evaluated.
    """
    if points >= len(grid):
        return [int(k) for k in grid]
    idx = np.unique(np.round(np.linspace(0, len(grid) - 1, max(points, 2))).astype(np.int64))
    return [int(grid[i]) for i in idx]


def keep_masks(order: Tensor, ks: Sequence[int], n_nodes: int) -> Tensor:
    """Bool ``[len(ks), n_nodes]``: row i keeps the first ``ks[i]`` nodes of ``order``."""
    rank = torch.empty(n_nodes, dtype=torch.long)
    rank[order] = torch.arange(n_nodes)
    return rank.unsqueeze(0) < torch.as_tensor(list(ks), dtype=torch.long).unsqueeze(1)


def sparsity_index(f: Sequence[float], target: float) -> int:
    """Index of the smallest size with ``f >= target`` there and at every later size."""
    idx = len(f) - 1
    for i in range(len(f) - 1, -1, -1):
        if f[i] >= target:
            idx = i
        else:
            break
    return idx


def area(ks: Sequence[int], values: Sequence[float], n_nodes: int) -> float:
    """Trapezoid area of ``values`` over ``k / n_nodes``."""
    x = np.asarray(ks, dtype=np.float64) / n_nodes
    y = np.asarray(values, dtype=np.float64)
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))


def run_null(
    evaluate: Callable[[Tensor], Tensor],
    n_nodes: int,
    grid: Sequence[int],
    *,
    size: int,
    seed: int,
    target: float,
    m_empty: float,
    m_model: float,
    observed_sparsity: float,
    pvalue: bool,
    level: float = 0.95,
) -> NullSummary:
    """``size`` random orderings evaluated at ``grid``; ``evaluate(keep) -> metric [V]``."""
    gen = torch.Generator().manual_seed(seed)
    orders = [torch.randperm(n_nodes, generator=gen) for _ in range(size)]
    inner = [k for k in grid if 0 < k < n_nodes]
    per = max(1, _KEEP_BUDGET // max(1, n_nodes * max(1, len(inner))))
    metrics = torch.empty(size, len(inner), dtype=torch.float64)
    for s in range(0, size, per):
        chunk = orders[s : s + per]
        keep = torch.cat([keep_masks(o, inner, n_nodes) for o in chunk])
        if keep.shape[1] and keep.shape[0]:
            metrics[s : s + len(chunk)] = evaluate(keep).view(len(chunk), len(inner))
    denom = m_model - m_empty
    f_inner = ((metrics - m_empty) / denom).numpy()
    curves = np.empty((size, len(grid)))
    j = 0
    for i, k in enumerate(grid):
        if k == 0:
            curves[:, i] = 0.0
        elif k == n_nodes:
            curves[:, i] = 1.0
        else:
            curves[:, i] = f_inner[:, j]
            j += 1
    sparsity = [grid[sparsity_index(c.tolist(), target)] / n_nodes for c in curves]
    lo_q, hi_q = (1 - level) / 2, 1 - (1 - level) / 2
    sp = np.asarray(sparsity)
    p = float((1 + np.sum(sp <= observed_sparsity)) / (1 + size)) if pvalue else None
    return NullSummary(
        size=size,
        seed=seed,
        k=[int(k) for k in grid],
        curves=curves.tolist(),
        sparsity=[float(x) for x in sparsity],
        observed_sparsity=float(observed_sparsity),
        pvalue=p,
        mean=curves.mean(0).tolist(),
        low=np.quantile(curves, lo_q, axis=0).tolist(),
        high=np.quantile(curves, hi_q, axis=0).tolist(),
        sparsity_mean=float(sp.mean()),
        sparsity_low=float(np.quantile(sp, lo_q)),
        sparsity_high=float(np.quantile(sp, hi_q)),
        auc_mean=float(np.mean([area(grid, c.tolist(), n_nodes) for c in curves])),
        level=level,
    )


def bootstrap(
    metric_fn: Any,
    sim_c: Tensor,
    sim_0: Tensor,
    sim_n: Tensor,
    n_boot: int,
    seed: int,
    level: float,
) -> tuple[float, float]:
    """Percentile interval of f at the circuit's size, resampling examples (rows + their
    captions) with replacement and recomputing each metric from the similarities."""
    if n_boot <= 0:
        return (float("nan"), float("nan"))
    n = sim_c.shape[0]
    gen = torch.Generator().manual_seed(seed + 1)
    idx = torch.randint(0, n, (n_boot, n), generator=gen)

    def resampled(sim: Tensor) -> Tensor:
        rows = sim[idx]  # [B, n, n_txt]
        cols = idx.unsqueeze(1).expand(n_boot, n, n)
        return torch.as_tensor(metric_fn(torch.gather(rows[..., :n], 2, cols))).double()

    mc, m0, mn = resampled(sim_c), resampled(sim_0), resampled(sim_n)
    with np.errstate(divide="ignore", invalid="ignore"):
        f = ((mc - m0) / (mn - m0)).numpy()
    f = f[np.isfinite(f)]
    if f.size == 0:
        return (float("nan"), float("nan"))
    lo, hi = np.quantile(f, [(1 - level) / 2, 1 - (1 - level) / 2])
    return (float(lo), float(hi))
