"""Sparse kernels of the top-k SAE decode and of both backward passes.

References in ``vlmfast.ops.reference``:

- ``gather_sum_kernel``: ``out[n] = sum_j coeff[n, j] * W[idx[n, j]]`` (``sparse_decode``
  forward; also the encoder's input gradient). One program per (row, d-block); the k
  rows are gathered as one ``[KP, BLOCK_D]`` tile.
- ``gather_dot_kernel``: ``out[n, j] = <g[n], W[idx[n, j]]>`` (``gather_dot``): the
  gradient of the selected values, only N x k dot products.
- ``scatter_rows_csr_kernel``: ``out[f] = sum_{idx[n,j] = f} coeff[n, j] * dense[n]``
  (``scatter_rows``): decoder- and encoder-weight gradients. Deterministic: the host
  sorts the (n, j) slots by latent (stable), and one program owns one latent and one
  d-block, summing its slots in (n, j) order; it also writes ``sum coeff`` per latent
  (the encoder-bias gradient). No atomics.
- ``scatter_rows_atomic_kernel``: the same sum with ``atomic_add`` (faster, order-dependent).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def gather_sum_kernel(
    coeff_ptr, idx_ptr, w_ptr, out_ptr, k, d, stride_w, KP: tl.constexpr, BLOCK_D: tl.constexpr
):
    row = tl.program_id(0)
    ds = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = ds < d
    slots = tl.arange(0, KP)
    s_ok = slots < k
    idx = tl.load(idx_ptr + row * k + slots, mask=s_ok, other=0)
    coeff = tl.load(coeff_ptr + row * k + slots, mask=s_ok, other=0.0).to(tl.float32)
    w = tl.load(
        w_ptr + idx[:, None] * stride_w + ds[None, :], mask=s_ok[:, None] & d_ok[None, :], other=0.0
    ).to(tl.float32)
    out = tl.sum(w * coeff[:, None], axis=0)
    tl.store(out_ptr + row * d + ds, out, mask=d_ok)


@triton.jit
def gather_dot_kernel(
    g_ptr, idx_ptr, w_ptr, out_ptr, k, d, stride_w, KP: tl.constexpr, BLOCK_D: tl.constexpr
):
    row = tl.program_id(0)
    slots = tl.arange(0, KP)
    s_ok = slots < k
    idx = tl.load(idx_ptr + row * k + slots, mask=s_ok, other=0)
    acc = tl.zeros((KP,), dtype=tl.float32)
    for d0 in range(0, d, BLOCK_D):
        ds = d0 + tl.arange(0, BLOCK_D)
        d_ok = ds < d
        g = tl.load(g_ptr + row * d + ds, mask=d_ok, other=0.0).to(tl.float32)
        w = tl.load(
            w_ptr + idx[:, None] * stride_w + ds[None, :],
            mask=s_ok[:, None] & d_ok[None, :],
            other=0.0,
        ).to(tl.float32)
        acc += tl.sum(w * g[None, :], axis=1)
    tl.store(out_ptr + row * k + slots, acc, mask=s_ok)


@triton.jit
def scatter_rows_csr_kernel(
    order_ptr,
    offsets_ptr,
    coeff_ptr,
    dense_ptr,
    out_ptr,
    bias_out_ptr,
    k,
    d,
    BLOCK_D: tl.constexpr,
    WRITE_BIAS: tl.constexpr,
):
    latent = tl.program_id(0)
    ds = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = ds < d
    start = tl.load(offsets_ptr + latent)
    stop = tl.load(offsets_ptr + latent + 1)
    acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    bias = 0.0
    for e in range(start, stop):
        slot = tl.load(order_ptr + e)
        row = slot // k
        c = tl.load(coeff_ptr + slot).to(tl.float32)
        acc += c * tl.load(dense_ptr + row * d + ds, mask=d_ok, other=0.0).to(tl.float32)
        bias += c
    tl.store(out_ptr + latent * d + ds, acc, mask=d_ok)
    if WRITE_BIAS and tl.program_id(1) == 0:
        tl.store(bias_out_ptr + latent, bias)


@triton.jit
def scatter_rows_atomic_kernel(
    idx_ptr, coeff_ptr, dense_ptr, out_ptr, k, d, KP: tl.constexpr, BLOCK_D: tl.constexpr
):
    row = tl.program_id(0)
    ds = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = ds < d
    slots = tl.arange(0, KP)
    s_ok = slots < k
    idx = tl.load(idx_ptr + row * k + slots, mask=s_ok, other=0)
    coeff = tl.load(coeff_ptr + row * k + slots, mask=s_ok, other=0.0).to(tl.float32)
    g = tl.load(dense_ptr + row * d + ds, mask=d_ok, other=0.0).to(tl.float32)
    contrib = coeff[:, None] * g[None, :]
    tl.atomic_add(
        out_ptr + idx[:, None] * d + ds[None, :], contrib, mask=s_ok[:, None] & d_ok[None, :]
    )
