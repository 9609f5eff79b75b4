"""One ``BLOCK_M x BLOCK_N`` tile of ``xc @ W_enc.T`` in fp32, shared by both encode kernels.

Accumulates over ``BLOCK_K`` slices of d_in (masked, so any d_in and any number of
latents work; masked rows and columns read zeros). ``SUM_DOT`` (set under
``TRITON_INTERPRET=1``) evaluates each slice as a broadcast multiply and a sum, so every
column is rounded the same way whatever BLAS the interpreter's ``numpy.matmul`` uses (see
``sae_topk_encode``); ``IEEE`` asks ``tl.dot`` for full fp32 instead of TF32.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def preact_tile(
    x_ptr,
    w_ptr,
    rows,
    cols,
    row_ok,
    col_ok,
    d_in,
    stride_x,
    stride_w,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    IEEE: tl.constexpr,
    SUM_DOT: tl.constexpr,
):
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
    return acc
