"""Fused threshold SAE encoder: GEMM tile + bias + per-latent threshold mask, dense output.

Reference: ``vlmfast.ops.threshold.masked_preacts_reference``.

One program owns a ``BLOCK_M x BLOCK_N`` tile of ``pre = xc @ W_enc.T + b_enc`` (fp32
accumulation over ``BLOCK_K`` slices of d_in, masked, so any d_in and any number of
latents work) and writes ``pre`` where ``pre > threshold[latent]`` and ``-inf`` elsewhere:
the encode of a BatchTopK SAE at inference (one global threshold, broadcast) and of a
JumpReLU SAE (one threshold per latent). ``xc`` is ``x - b_dec`` (the wrapper subtracts
it). The tile product is ``tile_preact.preact_tile``, shared with the top-k kernel.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .tile_preact import preact_tile


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
    acc = preact_tile(
        x_ptr, w_ptr, rows, cols, row_ok, col_ok, d_in, stride_x, stride_w,
        BLOCK_M, BLOCK_N, BLOCK_K, IEEE, SUM_DOT,
    )  # fmt: skip
    bias = tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    thr = tl.load(thr_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    pre = acc + bias[None, :]
    out = tl.where(pre > thr[None, :], pre, float("-inf"))
    tl.store(
        out_ptr + rows[:, None] * stride_out + cols[None, :],
        out,
        mask=row_ok[:, None] & col_ok[None, :],
    )
