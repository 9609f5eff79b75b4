"""Fused threshold SAE encoder: GEMM tile + bias + per-latent threshold mask, dense output.

Reference: ``vlmfast.ops.threshold.masked_preacts_reference``.

One program owns a ``BLOCK_M x BLOCK_N`` tile of ``pre = xc @ W_enc.T + b_enc`` (fp32
accumulation over ``BLOCK_K`` slices of d_in, masked, so any d_in and any number of
latents work) and writes ``pre`` where ``pre > threshold[latent]`` and ``-inf`` elsewhere:
the encode of a BatchTopK SAE at inference (one global threshold, broadcast) and of a
JumpReLU SAE (one threshold per latent). ``xc`` is ``x - b_dec`` (the wrapper subtracts
it). ``SUM_DOT`` (set under ``TRITON_INTERPRET=1``) evaluates the tile product as a
broadcast multiply and a sum over d_in, so every column is rounded the same way whatever
BLAS the interpreter's ``numpy.matmul`` uses (see ``sae_topk_encode``).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def threshold_encode_kernel(
    x_ptr,
    w_ptr,
    b_ptr,
    thr_ptr,
    out_ptr,
    n_rows,
    d_in,
    n_latents,
    stride_x,
    stride_w,
    stride_out,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    IEEE: tl.constexpr,
    SUM_DOT: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < n_rows
    col_ok = cols < n_latents
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for d0 in range(0, d_in, BLOCK_K):
        ks = d0 + tl.arange(0, BLOCK_K)
        k_ok = ks < d_in
        xt = tl.load(
            x_ptr + rows[:, None] * stride_x + ks[None, :],
            mask=row_ok[:, None] & k_ok[None, :],
            other=0.0,
        )
        wt = tl.load(
            w_ptr + cols[None, :] * stride_w + ks[:, None],
            mask=col_ok[None, :] & k_ok[:, None],
            other=0.0,
        )
        if SUM_DOT:
            acc += tl.sum(xt[:, :, None] * wt[None, :, :], axis=1)
        elif IEEE:
            acc += tl.dot(xt, wt, input_precision="ieee")
        else:
            acc += tl.dot(xt, wt)
    bias = tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    thr = tl.load(thr_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    pre = acc + bias[None, :]
    out = tl.where(pre > thr[None, :], pre, float("-inf"))
    tl.store(
        out_ptr + rows[:, None] * stride_out + cols[None, :],
        out,
        mask=row_ok[:, None] & col_ok[None, :],
    )
