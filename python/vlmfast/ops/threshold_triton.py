"""Launcher of the fused threshold encode kernel (``vlmfast._kernels.sae_threshold_encode``)."""

from __future__ import annotations

import torch
import triton

from vlmfast._kernels import sae_threshold_encode
from vlmfast.ops.dispatch import interpret_mode


def masked_preacts(
    x: torch.Tensor,
    w_enc: torch.Tensor,
    b_enc: torch.Tensor,
    b_dec: torch.Tensor,
    threshold: torch.Tensor,
) -> torch.Tensor:
    """``[N, n_latents]`` float32 pre-activations above ``threshold [n_latents]``, ``-inf``
    elsewhere; the maths of ``vlmfast.ops.threshold.masked_preacts_reference``."""
    xc = (x - b_dec.to(x.dtype)).contiguous()
    w = w_enc.to(xc.dtype).contiguous()
    n, d = xc.shape
    m = w.shape[0]
    out = torch.empty(n, m, dtype=torch.float32, device=x.device)
    if n == 0 or m == 0:
        return out
    interp = interpret_mode()
    block_m, block_n = (16, 16) if interp else (64, 128)
    block_k = 16 if interp else 32
    grid = (triton.cdiv(n, block_m), triton.cdiv(m, block_n))
    sae_threshold_encode.threshold_encode_kernel[grid](
        xc,
        w,
        b_enc.float().contiguous(),
        threshold.float().contiguous(),
        out,
        n,
        d,
        m,
        xc.stride(0),
        w.stride(0),
        out.stride(0),
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_K=block_k,
        IEEE=xc.dtype == torch.float32,
        SUM_DOT=interp,
    )
    return out
