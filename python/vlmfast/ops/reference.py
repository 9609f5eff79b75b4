"""Torch reference implementations of the sparse top-k SAE ops (the specification).

Every Triton kernel in ``vlmfast._kernels`` computes exactly what these functions
compute; the dispatcher in :mod:`vlmfast.ops` falls back to them off-GPU. They are
also the fast CPU path: the backward passes never form a dense ``N x n_latents``
gradient and never run a dense decoder GEMM; the scatter/gather work goes through
``embedding_bag`` (C++), so a CPU step costs one encoder GEMM plus O(N*k*d).

Conventions shared with the kernels:

- weights are row-major per latent: ``W_enc`` and ``W_dec`` are ``[n_latents, d_in]``;
- the encoder subtracts ``b_dec`` from the input: ``pre = (x - b_dec) @ W_enc.T + b_enc``;
- top-k is taken over the pre-activations, values are ``relu(pre)`` at the selected
  latents; the ``k`` outputs of a row are ordered by value (descending), ties go to the
  lowest latent index (also at the selection boundary);
- decode is ``sum_j values[n, j] * W_dec[indices[n, j]]`` (no bias: callers add ``b_dec``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.weak import WeakIdKeyDictionary

_SCRATCH_MAX_BYTES = 1 << 28
"""Largest pre-activation buffer kept between calls (256 MiB)."""
_PREACT_SCRATCH: WeakIdKeyDictionary = WeakIdKeyDictionary()
"""``W_enc -> [N, n_latents]`` buffer reused by the CPU encoder GEMM (see :func:`_preact_out`)."""


@dataclass
class EncodeOutput:
    """Sparse codes from :func:`topk_encode`."""

    values: torch.Tensor
    """``[N, k]`` ReLU'd pre-activations of the selected latents (float32 or x's dtype)."""
    indices: torch.Tensor
    """``[N, k]`` int64 latent indices, ordered by value descending, ties lowest index first."""
    aux_values: torch.Tensor | None = None
    """``[N, k_aux]`` values of the AuxK selection among dead latents (None without AuxK)."""
    aux_indices: torch.Tensor | None = None
    """``[N, k_aux]`` indices of the AuxK selection (None without AuxK)."""


def topk_lowest_index(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row top-k of ``scores [N, M]``: values descending, ties broken by lowest index.

    ``torch.topk`` gives no tie guarantee, so rows whose k-th and (k+1)-th values are
    equal are redone with a stable sort, and the k winners of every row are put in the
    canonical (value desc, index asc) order.
    """
    _n_rows, width = scores.shape
    if k > width:
        raise ValueError(f"k={k} exceeds the number of columns {width}")
    take = min(k + 1, width)
    vals, idx = scores.topk(take, dim=1, sorted=True)
    if take > k:
        tie_rows = (vals[:, k - 1] == vals[:, k]).nonzero().flatten()
        vals, idx = vals[:, :k].contiguous(), idx[:, :k].contiguous()
        if tie_rows.numel():
            s_vals, s_idx = torch.sort(scores[tie_rows], dim=1, descending=True, stable=True)
            vals[tie_rows] = s_vals[:, :k]
            idx[tie_rows] = s_idx[:, :k]
    # canonical order inside the selection: topk sorted by value already, so only rows
    # with equal neighbours need the index order (by index, then stable by value desc)
    dup = (vals[:, 1:] == vals[:, :-1]).any(1).nonzero().flatten() if k > 1 else None
    if dup is not None and dup.numel():
        sub_v, sub_i = vals[dup], idx[dup]
        by_index = sub_i.argsort(dim=1)
        sub_i, sub_v = sub_i.gather(1, by_index), sub_v.gather(1, by_index)
        by_value = torch.sort(sub_v, dim=1, descending=True, stable=True).indices
        vals[dup], idx[dup] = sub_v.gather(1, by_value), sub_i.gather(1, by_value)
    return vals, idx


def encoder_preacts(
    x: torch.Tensor, w_enc: torch.Tensor, b_enc: torch.Tensor, b_dec: torch.Tensor
) -> torch.Tensor:
    """Dense pre-activations ``(x - b_dec) @ W_enc.T + b_enc`` in x's dtype."""
    xc = x - b_dec.to(x.dtype)
    return torch.addmm(b_enc.to(x.dtype), xc, w_enc.to(x.dtype).t())


def _preact_out(x: torch.Tensor, w_enc: torch.Tensor) -> torch.Tensor | None:
    """A reused ``[N, n_latents]`` CPU buffer for the encoder GEMM, or None (allocate).

    A fresh buffer of this size costs the kernel one page fault per 4 KiB on every step
    (tens of ms at CLIP sizes, more than the top-k); the pre-activations never leave
    :class:`_TopKEncode`'s forward, so one buffer per encoder weight is reused.
    """
    shape = (x.shape[0], w_enc.shape[0])
    if x.is_cuda or shape[0] * shape[1] * x.element_size() > _SCRATCH_MAX_BYTES:
        return None
    buf = _PREACT_SCRATCH.get(w_enc)
    if buf is None or buf.shape != shape or buf.dtype != x.dtype or buf.device != x.device:
        buf = torch.empty(shape, dtype=x.dtype, device=x.device)
        _PREACT_SCRATCH[w_enc] = buf
    return buf


def reused_preacts(
    x: torch.Tensor, w_enc: torch.Tensor, b_enc: torch.Tensor, b_dec: torch.Tensor
) -> torch.Tensor:
    """Returns :func:`encoder_preacts` written into the per-encoder CPU buffer (see
    :func:`_preact_out`): valid until the next call for the same ``w_enc``, so a caller
    copies what it keeps (indexing and ``index_select`` copy) before encoding again."""
    out = _preact_out(x, w_enc)
    if out is None:
        return encoder_preacts(x, w_enc, b_enc, b_dec)
    xc = x - b_dec.to(x.dtype)
    return torch.addmm(b_enc.to(x.dtype), xc, w_enc.to(x.dtype).t(), out=out)


def scatter_entries(
    idx: torch.Tensor,
    entry_rows: torch.Tensor,
    coeffs: torch.Tensor,
    dense: torch.Tensor,
    n_rows: int,
) -> torch.Tensor:
    """Returns ``out[f] = sum of coeffs[e] * dense[entry_rows[e]]`` over entries ``idx[e] == f``.

    Returns ``[n_rows, d]`` in dense's dtype: the embedding-bag weight gradient without
    its forward gather (the gather costs ``nnz * d`` reads), through torch's native
    embedding-bag backward (no ``nnz x d`` temporary). ``idx``, ``entry_rows`` and
    ``coeffs`` are ``[nnz]``; ``entry_rows`` index the rows of ``dense``.
    """
    bag_size = torch.bincount(entry_rows, minlength=dense.shape[0])
    return torch.ops.aten._embedding_bag_dense_backward(
        dense,
        idx,
        entry_rows,
        bag_size,
        bag_size.new_empty(0),
        n_rows,
        scale_grad_by_freq=False,
        mode=0,
        per_sample_weights=coeffs.to(dense.dtype),
    )


def _scatter_grad(
    indices: torch.Tensor, n_rows: int, coeffs: torch.Tensor, dense: torch.Tensor
) -> torch.Tensor:
    """``S^T @ dense`` with ``S[n, indices[n,j]] = coeffs[n,j]``: ``[n_rows, d]`` in dense's dtype."""
    n, k = indices.shape
    rows = torch.arange(n, device=indices.device).repeat_interleave(k)
    return scatter_entries(indices.reshape(-1), rows, coeffs.reshape(-1), dense, n_rows)


def select_topk(
    pre: torch.Tensor, k: int, dead_mask: torch.Tensor | None = None, k_aux: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Top-k over all latents and, if ``k_aux > 0``, top-k_aux over the dead ones.

    Returns pre-activation values (before ReLU) and indices for both selections.
    ``k_aux`` is clamped to the number of dead latents; with none dead the AuxK
    outputs are ``None``.
    """
    vals, idx = topk_lowest_index(pre, k)
    aux_vals = aux_idx = None
    if k_aux > 0 and dead_mask is not None:
        dead_idx = dead_mask.nonzero().flatten()
        k_eff = min(k_aux, int(dead_idx.numel()))
        if k_eff > 0:
            local_vals, local_idx = topk_lowest_index(pre.index_select(1, dead_idx), k_eff)
            aux_vals, aux_idx = local_vals, dead_idx[local_idx]
    return vals, idx, aux_vals, aux_idx


def _embedding_bag_grads(
    indices: torch.Tensor, weight: torch.Tensor, weights_per_slot: torch.Tensor, grad: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum_j w[n,j] * weight[indices[n,j]], scatter of w[n,j] * grad[n] into rows)``.

    The first output is a gather-sum (embedding bag); the second is the sparse-transpose
    product ``S^T @ grad`` with ``S[n, indices[n,j]] = w[n,j]``, computed by torch's
    native embedding-bag backward (no ``N*k x d`` temporary).
    """
    leaf = weight.detach().requires_grad_()
    with torch.enable_grad():
        out = F.embedding_bag(
            indices, leaf, per_sample_weights=weights_per_slot.to(weight.dtype), mode="sum"
        )
        (scatter,) = torch.autograd.grad(out, leaf, grad_outputs=grad.to(weight.dtype))
    return out.detach(), scatter


class _TopKEncode(torch.autograd.Function):
    """Dense GEMM + top-k forward; backward only at the selected (and AuxK) latents."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        w_enc: torch.Tensor,
        b_enc: torch.Tensor,
        b_dec: torch.Tensor,
        k: int,
        dead_mask: torch.Tensor | None,
        k_aux: int,
        compute_dtype: torch.dtype | None,
    ) -> tuple[torch.Tensor, ...]:
        dtype = compute_dtype or x.dtype
        pre = reused_preacts(x.to(dtype), w_enc, b_enc, b_dec)
        vals, idx, aux_vals, aux_idx = select_topk(pre, k, dead_mask, k_aux)
        del pre
        out_dtype = w_enc.dtype
        values = torch.relu(vals).to(out_dtype)
        if aux_vals is None or aux_idx is None:
            aux_values = values.new_zeros((x.shape[0], 0))
            aux_idx = idx.new_zeros((x.shape[0], 0))
        else:
            aux_values = torch.relu(aux_vals).to(out_dtype)
        ctx.save_for_backward(x, w_enc, b_dec, values, idx, aux_values, aux_idx)
        ctx.n_latents = w_enc.shape[0]
        ctx.mark_non_differentiable(idx, aux_idx)
        return values, idx, aux_values, aux_idx

    @staticmethod
    def backward(
        ctx: Any,
        g_values: torch.Tensor | None,
        _g_idx: Any,
        g_aux: torch.Tensor | None,
        _g_aux_idx: Any,
    ) -> tuple[torch.Tensor | None, ...]:
        x, w_enc, b_dec, values, idx, aux_values, aux_idx = ctx.saved_tensors
        if g_values is None:
            g_values = torch.zeros_like(values)
        grads = [g_values * (values > 0)]
        idx_all = [idx]
        if aux_idx.shape[1] and g_aux is not None:
            grads.append(g_aux * (aux_values > 0))
            idx_all.append(aux_idx)
        dpre = torch.cat(grads, dim=1) if len(grads) > 1 else grads[0]
        cat_idx = torch.cat(idx_all, dim=1) if len(idx_all) > 1 else idx_all[0]
        xc = (x - b_dec.to(x.dtype)).to(w_enc.dtype)
        grad_b_enc = torch.zeros(ctx.n_latents, dtype=w_enc.dtype, device=w_enc.device)
        grad_b_enc.index_add_(0, cat_idx.flatten(), dpre.flatten().to(w_enc.dtype))
        need_x, _, _, need_bdec = ctx.needs_input_grad[:4]
        grad_x = grad_b_dec = None
        if need_x:
            grad_xc, grad_w = _embedding_bag_grads(cat_idx, w_enc, dpre, xc)
            grad_x = grad_xc.to(x.dtype)
            grad_b_dec = -grad_xc.sum(0).to(b_dec.dtype) if need_bdec else None
        else:
            # sum_n grad_xc[n] = sum_f grad_b_enc[f] * W_enc[f]: one GEMV, no N*k gather
            grad_w = _scatter_grad(cat_idx, ctx.n_latents, dpre, xc)
            grad_b_dec = -(grad_b_enc @ w_enc).to(b_dec.dtype) if need_bdec else None
        return grad_x, grad_w, grad_b_enc, grad_b_dec, None, None, None, None


def topk_encode(
    x: torch.Tensor,
    w_enc: torch.Tensor,
    b_enc: torch.Tensor,
    b_dec: torch.Tensor,
    k: int,
    *,
    dead_mask: torch.Tensor | None = None,
    k_aux: int = 0,
    compute_dtype: torch.dtype | None = None,
) -> EncodeOutput:
    """Top-k SAE encode with an optional AuxK selection over ``dead_mask`` latents.

    Differentiable in ``x``, ``w_enc``, ``b_enc`` and ``b_dec`` through both selections;
    gradients touch only the selected latents. ``compute_dtype`` (e.g. bfloat16) runs the
    GEMM and the selection in that dtype; values come back in ``w_enc``'s dtype.
    """
    values, idx, aux_values, aux_idx = _TopKEncode.apply(
        x, w_enc, b_enc, b_dec, k, dead_mask, k_aux, compute_dtype
    )
    if aux_idx.shape[1] == 0:
        return EncodeOutput(values, idx)
    return EncodeOutput(values, idx, aux_values, aux_idx)


def sparse_decode(values: torch.Tensor, indices: torch.Tensor, w_dec: torch.Tensor) -> torch.Tensor:
    """``out[n] = sum_j values[n,j] * W_dec[indices[n,j]]`` (no bias), differentiable.

    The backward is torch's embedding-bag backward: ``N*k`` dot products for the values
    and a sparse scatter for ``W_dec``; nothing of size ``N x n_latents`` is formed.
    """
    return F.embedding_bag(indices, w_dec, per_sample_weights=values.to(w_dec.dtype), mode="sum")


def sparse_decode_many(
    parts: list[tuple[torch.Tensor, torch.Tensor]], w_dec: torch.Tensor
) -> list[torch.Tensor]:
    """:func:`sparse_decode` of several ``(values, indices)`` pairs in one embedding bag.

    One call means one backward pass over ``W_dec`` (one zero-fill and one index sort)
    instead of one per pair; the training step decodes the top-k and the AuxK codes so.
    """
    if len(parts) == 1:
        return [sparse_decode(parts[0][0], parts[0][1], w_dec)]
    flat_idx, flat_val, offsets, rows = [], [], [], []
    start = 0
    for values, indices in parts:
        n, k = indices.shape
        flat_idx.append(indices.reshape(-1))
        flat_val.append(values.reshape(-1).to(w_dec.dtype))
        offsets.append(torch.arange(n, device=indices.device, dtype=torch.int64) * k + start)
        start += n * k
        rows.append(n)
    out = F.embedding_bag(
        torch.cat(flat_idx),
        w_dec,
        torch.cat(offsets),
        mode="sum",
        per_sample_weights=torch.cat(flat_val),
    )
    return list(out.split(rows))


def gather_dot(grad: torch.Tensor, indices: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``out[n, j] = <grad[n], weight[indices[n, j]]>``: the SDDMM of the decode backward."""
    out = torch.empty(indices.shape, dtype=torch.float32, device=grad.device)
    step = 128
    for s in range(0, indices.shape[0], step):
        rows = weight[indices[s : s + step]].float()
        out[s : s + step] = torch.bmm(rows, grad[s : s + step, :, None].float()).squeeze(-1)
    return out


def scatter_rows(
    indices: torch.Tensor, coeffs: torch.Tensor, dense: torch.Tensor, n_rows: int
) -> torch.Tensor:
    """``out[f] = sum over (n,j) with indices[n,j] == f of coeffs[n,j] * dense[n]``.

    The sparse-transpose-times-dense product behind the decoder-weight and the
    encoder-weight gradients; returns float32 ``[n_rows, d]``.
    """
    out = torch.zeros(n_rows, dense.shape[1], dtype=torch.float32, device=dense.device)
    contrib = coeffs.float()[:, :, None] * dense.float()[:, None, :]
    out.index_add_(0, indices.flatten(), contrib.reshape(-1, dense.shape[1]))
    return out


__all__ = [
    "EncodeOutput",
    "encoder_preacts",
    "gather_dot",
    "reused_preacts",
    "scatter_entries",
    "scatter_rows",
    "select_topk",
    "sparse_decode",
    "sparse_decode_many",
    "topk_encode",
    "topk_lowest_index",
]
