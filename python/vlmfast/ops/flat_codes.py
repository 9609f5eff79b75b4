"""Flat sparse codes: a variable number of active latents per row, without padding.

BatchTopK lets a row take any number of the batch's ``k * N`` latents, and a JumpReLU
row fires whatever clears its thresholds; padding every row to the busiest one would
make the decode and the backward scale with that row. Flat codes keep only the active
entries, row-major (rows ascending, latents ascending inside a row), as ``values
[nnz]``, ``indices [nnz]`` (latents), ``rows [nnz]`` and ``offsets [N]`` (first entry of
each row), which is ``torch.nn.functional.embedding_bag``'s bag layout: the decode is
one embedding bag, and :func:`sparse_preacts` makes selected pre-activations
differentiable with a backward that touches only the selected latents.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from vlmfast.errors import InputError, ShapeError
from vlmfast.ops.batch_select import batch_topk_positions
from vlmfast.ops.reference import scatter_entries


@dataclass
class FlatCodes:
    """Row-major flat codes of ``n_rows`` rows (see the module docstring)."""

    values: torch.Tensor
    """``[nnz]`` activations (or pre-activations) of the active entries."""
    indices: torch.Tensor
    """``[nnz]`` int64 latent of each entry."""
    rows: torch.Tensor
    """``[nnz]`` int64 row of each entry (non-decreasing)."""
    offsets: torch.Tensor
    """``[n_rows]`` int64 index of each row's first entry."""


def offsets_of(rows: torch.Tensor, n_bags: int) -> torch.Tensor:
    """``[n_bags]`` first-entry offsets of the non-decreasing bag ids ``rows``."""
    bags = torch.arange(n_bags, device=rows.device, dtype=rows.dtype)
    return torch.searchsorted(rows, bags)


def entry_bags(offsets: torch.Tensor, nnz: int) -> torch.Tensor:
    """Returns the ``[nnz]`` bag of each entry, given the bags' first-entry ``offsets``."""
    sizes = torch.diff(offsets, append=offsets.new_tensor([nnz]))
    bags = torch.arange(offsets.numel(), device=offsets.device, dtype=offsets.dtype)
    return torch.repeat_interleave(bags, sizes, output_size=nnz)


def from_positions(flat: torch.Tensor, values: torch.Tensor, n_rows: int, width: int) -> FlatCodes:
    """Flat codes of the ascending flat positions ``flat`` in an ``[n_rows, width]`` matrix."""
    rows = flat // width
    return FlatCodes(values, flat % width, rows, offsets_of(rows, n_rows))


class _SparsePreacts(torch.autograd.Function):
    """``pre[e] = (x[row e] - b_dec) . W_enc[idx e] + b_enc[idx e]``, given its value.

    Entries come as ``n_bags = r * N`` bags (``offsets``): bag ``j * N + n`` holds entries
    of row ``n`` (``r`` > 1 when several selections share one backward).
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        w_enc: torch.Tensor,
        b_enc: torch.Tensor,
        b_dec: torch.Tensor,
        idx: torch.Tensor,
        offsets: torch.Tensor,
        pre: torch.Tensor,
    ) -> torch.Tensor:
        ctx.save_for_backward(x, w_enc, b_dec, idx, offsets)
        ctx.mark_non_differentiable(idx, offsets)
        return pre.detach().to(w_enc.dtype).clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, w_enc, b_dec, idx, offsets = ctx.saved_tensors
        n = x.shape[0]
        xc = (x - b_dec.to(x.dtype)).to(w_enc.dtype)
        grad = grad.to(w_enc.dtype)
        grad_b_enc = torch.zeros(w_enc.shape[0], dtype=w_enc.dtype, device=w_enc.device)
        grad_b_enc.index_add_(0, idx, grad)
        need_x, _, _, need_bdec = ctx.needs_input_grad[:4]
        if not need_x:  # training: no gather; sum_n grad_xc[n] = grad_b_enc @ W_enc
            rows = entry_bags(offsets, idx.numel()) % max(1, n)
            grad_w = scatter_entries(idx, rows, grad, xc, w_enc.shape[0])
            grad_b_dec = -(grad_b_enc @ w_enc).to(b_dec.dtype) if need_bdec else None
            return None, grad_w, grad_b_enc, grad_b_dec, None, None, None
        reps = offsets.numel() // max(1, n)
        leaf = w_enc.detach().requires_grad_()
        with torch.enable_grad():
            out = F.embedding_bag(idx, leaf, offsets, mode="sum", per_sample_weights=grad)
            target = xc if reps == 1 else xc.repeat(reps, 1)
            (grad_w,) = torch.autograd.grad(out, leaf, grad_outputs=target)
        grad_xc = out.detach().view(reps, n, -1).sum(0)
        grad_b_dec = -grad_xc.sum(0).to(b_dec.dtype) if need_bdec else None
        return grad_xc.to(x.dtype), grad_w, grad_b_enc, grad_b_dec, None, None, None


def sparse_preacts(
    x: torch.Tensor,
    w_enc: torch.Tensor,
    b_enc: torch.Tensor,
    b_dec: torch.Tensor,
    parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
) -> list[torch.Tensor]:
    """Pre-activations made differentiable in ``x``, ``w_enc``, ``b_enc``, ``b_dec``.

    ``parts``: ``(pre [nnz], latents [nnz], offsets [N])`` selections of the rows of ``x``
    (flat codes; a padded ``[N, w]`` selection is ``pre.flatten(), idx.flatten(),
    arange(N) * w``). Returns each part's ``pre`` in ``w_enc``'s dtype, attached to one
    shared sparse backward. Raises ShapeError for mismatched parts.
    """
    n = x.shape[0]
    for pre, idx, offsets in parts:
        if pre.shape != idx.shape or pre.ndim != 1 or offsets.shape != (n,):
            raise ShapeError(
                f"sparse_preacts: pre {list(pre.shape)}, latents {list(idx.shape)} and"
                f" offsets {list(offsets.shape)} must be [nnz], [nnz], [{n}]"
            )
    starts = [0]
    for pre, _, _ in parts[:-1]:
        starts.append(starts[-1] + pre.numel())
    cat_idx = torch.cat([p[1] for p in parts])
    cat_off = torch.cat([p[2] + s for p, s in zip(parts, starts)])
    cat_pre = torch.cat([p[0] for p in parts])
    out: torch.Tensor = _SparsePreacts.apply(x, w_enc, b_enc, b_dec, cat_idx, cat_off, cat_pre)
    return list(out.split([p[0].numel() for p in parts]))


def flat_decode_many(
    parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], w_dec: torch.Tensor
) -> list[torch.Tensor]:
    """``[n_bags_i, d]`` sums ``sum_e values[e] * W_dec[latent e]`` per bag for every part
    ``(values [nnz], latents [nnz], offsets [n_bags_i])``, in one embedding bag (no bias)."""
    starts = [0]
    for values, _, _ in parts[:-1]:
        starts.append(starts[-1] + values.numel())
    out = F.embedding_bag(
        torch.cat([p[1] for p in parts]),
        w_dec,
        torch.cat([p[2] + s for p, s in zip(parts, starts)]),
        mode="sum",
        per_sample_weights=torch.cat([p[0] for p in parts]).to(w_dec.dtype),
    )
    return list(out.split([p[2].numel() for p in parts]))


def batch_topk_select(pre: torch.Tensor, k: int) -> FlatCodes:
    """BatchTopK: flat codes of the ``k * N`` largest entries of ``pre [N, M]`` (values:
    the pre-activations; not differentiable, see :func:`sparse_preacts`). Ties at the
    boundary go to the lowest flat position (:mod:`vlmfast.ops.batch_select`).

    Raises InputError when ``k`` is not in ``[1, M]``.
    """
    n, m = pre.shape
    if not 1 <= k <= m:
        raise InputError(f"batch_topk_select: k={k} must lie in [1, {m}]")
    flat = batch_topk_positions(pre, k * n)
    return from_positions(flat, pre.flatten()[flat], n, m)


def mask_select(pre: torch.Tensor, mask: torch.Tensor) -> FlatCodes:
    """Flat codes of the entries of ``pre [N, M]`` where ``mask``."""
    rows, cols = mask.nonzero(as_tuple=True)
    return FlatCodes(pre[rows, cols], cols, rows, offsets_of(rows, pre.shape[0]))


__all__ = [
    "FlatCodes",
    "batch_topk_select",
    "entry_bags",
    "flat_decode_many",
    "from_positions",
    "mask_select",
    "offsets_of",
    "sparse_preacts",
]
