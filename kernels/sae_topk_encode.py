"""Fused top-k SAE encoder: GEMM tile + bias + running per-row top-k, writing only (N, k).

Reference: ``vlmfast.ops.reference.topk_encode`` (the selection part).

One program owns ``BLOCK_M`` rows and streams every latent tile of ``BLOCK_N`` columns:
``pre = xc @ W_enc[tile].T + b_enc[tile]`` accumulates in fp32 over ``BLOCK_K`` slices of
d_in (masked, so any d_in works without padding to a power of two). Each (value, column)
pair is packed into one int64 key: the high 32 bits are the fp32 bits mapped to a
signed-order integer, the low 32 bits are ``2**31 - 1 - column``; ordering keys orders by
value, ties by lowest column. A tile's top ``KP`` keys (``tl.topk``) merge into the running
top ``KP`` by the bitonic rule ``max(best_desc, flip(tile_top_desc))`` followed by a sort.
A tile that cannot beat any row's current threshold is skipped. With ``HAS_AUX`` the same
pre-activations also feed a second running top ``KPA`` restricted to dead latents (AuxK).
The N x n_latents pre-activation matrix never exists.

Ties need identical columns to get bit-identical pre-activations. On a GPU ``tl.dot``
computes every output element the same way wherever it sits in the tile; Triton's CPU
interpreter runs ``tl.dot`` as ``numpy.matmul``, whose OpenBLAS micro-kernels round
differently by column position on some cores (``OPENBLAS_CORETYPE=Haswell`` or ``Zen``:
column 30 of a 64-wide tile came out 1 ulp above columns 3 and 7 holding the same
weights, so the tie went to 30). With ``SUM_DOT`` (set by the wrapper under the
interpreter) the tile product is a broadcast multiply and a sum over d_in, evaluated
identically for every column, so the documented order holds whatever BLAS core is used.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .tile_preact import preact_tile

# key of (-inf, column 2**31 - 1): below every real candidate
INIT_KEY = -9187343243009966080


@triton.jit
def _pack(pre, cols):
    bits = pre.to(tl.int32, bitcast=True)
    ordered = tl.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)
    low = (2147483647 - cols).to(tl.int64)
    return (ordered.to(tl.int64) << 32) | low[None, :]


@triton.jit
def _unpack(keys):
    hi = (keys >> 32).to(tl.int32)
    bits = tl.where(hi >= 0, hi, hi ^ 0x7FFFFFFF)
    values = bits.to(tl.float32, bitcast=True)
    cols = 2147483647 - (keys & 0xFFFFFFFF).to(tl.int32)
    return values, cols


@triton.jit
def _merge(best, keys, KP: tl.constexpr):
    top = tl.topk(keys, KP)
    return tl.sort(tl.maximum(best, tl.flip(top, 1)), descending=True)


@triton.jit
def topk_encode_kernel(
    x_ptr,
    w_ptr,
    b_ptr,
    dead_ptr,
    val_ptr,
    idx_ptr,
    aux_val_ptr,
    aux_idx_ptr,
    n_rows,
    d_in,
    n_latents,
    stride_x,
    stride_w,
    k,
    k_aux,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    KP: tl.constexpr,
    KPA: tl.constexpr,
    HAS_AUX: tl.constexpr,
    IEEE: tl.constexpr,
    SUM_DOT: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < n_rows
    best = tl.full((BLOCK_M, KP), INIT_KEY, tl.int64)
    aux_best = tl.full((BLOCK_M, KPA), INIT_KEY, tl.int64)
    for f0 in range(0, n_latents, BLOCK_N):
        cols = f0 + tl.arange(0, BLOCK_N)
        col_ok = cols < n_latents
        acc = preact_tile(
            x_ptr, w_ptr, rows, cols, row_ok, col_ok, d_in, stride_x, stride_w,
            BLOCK_M, BLOCK_N, BLOCK_K, IEEE, SUM_DOT,
        )  # fmt: skip
        bias = tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
        pre = tl.where(col_ok[None, :], acc + bias[None, :], float("-inf"))
        keys = _pack(pre, cols)
        threshold = tl.min(best, axis=1)
        if tl.sum((tl.max(keys, axis=1) > threshold).to(tl.int32)) > 0:
            best = _merge(best, keys, KP)
        if HAS_AUX:
            dead = tl.load(dead_ptr + cols, mask=col_ok, other=0) != 0
            aux_keys = tl.where(dead[None, :], keys, INIT_KEY)
            aux_threshold = tl.min(aux_best, axis=1)
            if tl.sum((tl.max(aux_keys, axis=1) > aux_threshold).to(tl.int32)) > 0:
                aux_best = _merge(aux_best, aux_keys, KPA)
    values, cols_out = _unpack(best)
    slots = tl.arange(0, KP)
    out_mask = row_ok[:, None] & (slots[None, :] < k)
    offs = rows[:, None] * k + slots[None, :]
    tl.store(val_ptr + offs, tl.maximum(values, 0.0), mask=out_mask)
    tl.store(idx_ptr + offs, cols_out.to(tl.int64), mask=out_mask)
    if HAS_AUX:
        aux_values, aux_cols = _unpack(aux_best)
        aux_slots = tl.arange(0, KPA)
        aux_mask = row_ok[:, None] & (aux_slots[None, :] < k_aux)
        aux_offs = rows[:, None] * k_aux + aux_slots[None, :]
        tl.store(aux_val_ptr + aux_offs, tl.maximum(aux_values, 0.0), mask=aux_mask)
        tl.store(aux_idx_ptr + aux_offs, aux_cols.to(tl.int64), mask=aux_mask)
