"""Autograd wrappers launching the Triton kernels of ``vlmfast._kernels`` (same maths as the reference)."""

from __future__ import annotations

from typing import Any

import torch
import triton

from vlmfast._kernels import sae_sparse, sae_topk_encode
from vlmfast.errors import InputError
from vlmfast.ops.dispatch import interpret_mode
from vlmfast.ops.reference import EncodeOutput


def _pow2(n: int) -> int:
    return max(1, triton.next_power_of_2(int(n)))


def _block_d(kp: int, d: int) -> int:
    return max(16, min(_pow2(d), 4096 // max(1, kp), 128))


def gather_sum(coeff: torch.Tensor, indices: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``out[n] = sum_j coeff[n,j] * weight[indices[n,j]]`` in float32."""
    n, k = indices.shape
    d = weight.shape[1]
    out = torch.empty(n, d, dtype=torch.float32, device=weight.device)
    if n == 0:
        return out
    kp = _pow2(k)
    block_d = _block_d(kp, d)
    weight = weight.contiguous()
    grid = (n, triton.cdiv(d, block_d))
    sae_sparse.gather_sum_kernel[grid](
        coeff.contiguous(),
        indices.contiguous(),
        weight,
        out,
        k,
        d,
        weight.stride(0),
        KP=kp,
        BLOCK_D=block_d,
    )
    return out


def gather_dot(grad: torch.Tensor, indices: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``out[n,j] = <grad[n], weight[indices[n,j]]>`` in float32."""
    n, k = indices.shape
    d = weight.shape[1]
    out = torch.empty(n, k, dtype=torch.float32, device=weight.device)
    if n == 0:
        return out
    kp = _pow2(k)
    weight = weight.contiguous()
    sae_sparse.gather_dot_kernel[(n,)](
        grad.contiguous(),
        indices.contiguous(),
        weight,
        out,
        k,
        d,
        weight.stride(0),
        KP=kp,
        BLOCK_D=_block_d(kp, d),
    )
    return out


def scatter_rows(
    indices: torch.Tensor,
    coeffs: torch.Tensor,
    dense: torch.Tensor,
    n_rows: int,
    *,
    deterministic: bool = True,
    with_bias: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``out[f] = sum_{indices[n,j]=f} coeffs[n,j] * dense[n]`` (+ ``sum coeffs`` per f)."""
    n, k = indices.shape
    d = dense.shape[1]
    dense = dense.contiguous()
    coeffs = coeffs.contiguous()
    if deterministic or with_bias:
        flat = indices.reshape(-1)
        order = torch.argsort(flat, stable=True)
        counts = torch.bincount(flat, minlength=n_rows)
        offsets = torch.zeros(n_rows + 1, dtype=torch.int64, device=dense.device)
        offsets[1:] = torch.cumsum(counts, 0)
        out = torch.empty(n_rows, d, dtype=torch.float32, device=dense.device)
        bias = torch.empty(n_rows, dtype=torch.float32, device=dense.device)
        block_d = min(128, _pow2(d))
        grid = (n_rows, triton.cdiv(d, block_d))
        sae_sparse.scatter_rows_csr_kernel[grid](
            order, offsets, coeffs, dense, out, bias, k, d, BLOCK_D=block_d, WRITE_BIAS=with_bias
        )
        return out, (bias if with_bias else None)
    out = torch.zeros(n_rows, d, dtype=torch.float32, device=dense.device)
    kp = _pow2(k)
    block_d = _block_d(kp, d)
    grid = (n, triton.cdiv(d, block_d))
    sae_sparse.scatter_rows_atomic_kernel[grid](
        indices.contiguous(), coeffs, dense, out, k, d, KP=kp, BLOCK_D=block_d
    )
    return out, None


def topk_select(
    xc: torch.Tensor,
    w_enc: torch.Tensor,
    b_enc: torch.Tensor,
    k: int,
    dead_mask: torch.Tensor | None = None,
    k_aux: int = 0,
    *,
    ieee: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Fused ``relu(topk(xc @ W_enc.T + b_enc))`` (+ AuxK among dead latents); float32 values."""
    n, d = xc.shape
    n_latents = w_enc.shape[0]
    if not 1 <= k <= n_latents:
        raise InputError(f"topk_encode: k={k} must be in [1, n_latents={n_latents}]")
    has_aux = bool(k_aux > 0 and dead_mask is not None)
    if has_aux:
        assert dead_mask is not None
        k_aux = min(k_aux, int(dead_mask.sum()))
        has_aux = k_aux > 0
    kp = _pow2(k)
    kpa = _pow2(k_aux) if has_aux else 1
    block_m = 16
    block_n = max(64, kp, kpa)
    block_k = min(64, max(16, _pow2(d)))
    values = torch.empty(n, k, dtype=torch.float32, device=xc.device)
    idx = torch.empty(n, k, dtype=torch.int64, device=xc.device)
    aux_values = torch.empty(n, k_aux if has_aux else 0, dtype=torch.float32, device=xc.device)
    aux_idx = torch.empty(n, k_aux if has_aux else 0, dtype=torch.int64, device=xc.device)
    dead = (
        dead_mask.to(torch.int8).contiguous()
        if has_aux and dead_mask is not None
        else torch.zeros(1, dtype=torch.int8, device=xc.device)
    )
    xc = xc.contiguous()
    w_enc = w_enc.to(xc.dtype).contiguous()
    if n:
        sae_topk_encode.topk_encode_kernel[(triton.cdiv(n, block_m),)](
            xc,
            w_enc,
            b_enc.contiguous(),
            dead,
            values,
            idx,
            aux_values,
            aux_idx,
            n,
            d,
            n_latents,
            xc.stride(0),
            w_enc.stride(0),
            k,
            k_aux,
            BLOCK_M=block_m,
            BLOCK_N=block_n,
            BLOCK_K=block_k,
            KP=kp,
            KPA=kpa,
            HAS_AUX=has_aux,
            IEEE=ieee and xc.dtype == torch.float32,
            SUM_DOT=interpret_mode(),
        )
    if not has_aux:
        return values, idx, None, None
    return values, idx, aux_values, aux_idx


class _TritonEncode(torch.autograd.Function):
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
        deterministic: bool,
    ) -> tuple[torch.Tensor, ...]:
        xc = (x - b_dec.to(x.dtype)).to(compute_dtype or x.dtype)
        values, idx, aux_values, aux_idx = topk_select(xc, w_enc, b_enc, k, dead_mask, k_aux)
        values = values.to(w_enc.dtype)
        if aux_values is None or aux_idx is None:
            aux_values = values.new_zeros((x.shape[0], 0))
            aux_idx = idx.new_zeros((x.shape[0], 0))
        else:
            aux_values = aux_values.to(w_enc.dtype)
        ctx.save_for_backward(x, w_enc, b_dec, values, idx, aux_values, aux_idx)
        ctx.deterministic = deterministic
        ctx.mark_non_differentiable(idx, aux_idx)
        return values, idx, aux_values, aux_idx

    @staticmethod
    def backward(
        ctx: Any, g_values: torch.Tensor | None, _gi: Any, g_aux: torch.Tensor | None, _ga: Any
    ) -> tuple[torch.Tensor | None, ...]:
        x, w_enc, b_dec, values, idx, aux_values, aux_idx = ctx.saved_tensors
        if g_values is None:
            g_values = torch.zeros_like(values)
        dpre = g_values * (values > 0)
        cat_idx = idx
        if aux_idx.shape[1] and g_aux is not None:
            dpre = torch.cat([dpre, g_aux * (aux_values > 0)], dim=1)
            cat_idx = torch.cat([idx, aux_idx], dim=1)
        dpre = dpre.float().contiguous()
        cat_idx = cat_idx.contiguous()
        xc = (x - b_dec.to(x.dtype)).float()
        grad_w, grad_b = scatter_rows(cat_idx, dpre, xc, w_enc.shape[0], with_bias=True)
        grad_xc = gather_sum(dpre, cat_idx, w_enc)
        need_x, _, _, need_bdec = ctx.needs_input_grad[:4]
        grad_x = grad_xc.to(x.dtype) if need_x else None
        grad_b_dec = -grad_xc.sum(0).to(b_dec.dtype) if need_bdec else None
        assert grad_b is not None
        return (
            grad_x,
            grad_w.to(w_enc.dtype),
            grad_b.to(w_enc.dtype),
            grad_b_dec,
            None,
            None,
            None,
            None,
            None,
        )


class _TritonDecode(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        values: torch.Tensor,
        indices: torch.Tensor,
        w_dec: torch.Tensor,
        deterministic: bool,
    ) -> torch.Tensor:
        ctx.save_for_backward(values, indices, w_dec)
        ctx.deterministic = deterministic
        return gather_sum(values, indices, w_dec).to(w_dec.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        values, indices, w_dec = ctx.saved_tensors
        grad = grad.contiguous()
        g_values = (
            gather_dot(grad, indices, w_dec).to(values.dtype) if ctx.needs_input_grad[0] else None
        )
        g_w = None
        if ctx.needs_input_grad[2]:
            g_w, _ = scatter_rows(
                indices,
                values.float(),
                grad.float(),
                w_dec.shape[0],
                deterministic=ctx.deterministic,
            )
            g_w = g_w.to(w_dec.dtype)
        return g_values, None, g_w, None


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
    deterministic: bool = True,
) -> EncodeOutput:
    values, idx, aux_values, aux_idx = _TritonEncode.apply(
        x, w_enc, b_enc, b_dec, k, dead_mask, k_aux, compute_dtype, deterministic
    )
    if aux_idx.shape[1] == 0:
        return EncodeOutput(values, idx)
    return EncodeOutput(values, idx, aux_values, aux_idx)


def sparse_decode(
    values: torch.Tensor, indices: torch.Tensor, w_dec: torch.Tensor, *, deterministic: bool = True
) -> torch.Tensor:
    out: torch.Tensor = _TritonDecode.apply(values, indices, w_dec, deterministic)
    return out
