"""Sparse top-k SAE ops with per-call dispatch: Triton kernel on CUDA, torch reference otherwise.

``topk_encode`` (fused GEMM + bias + ReLU + top-k, optional AuxK over dead latents)
and ``sparse_decode`` (gather-sum of decoder rows) are differentiable; their
backward passes touch only the selected latents. See :mod:`vlmfast.ops.dispatch`
for the environment variables (``VLMFAST_STRICT``, ``VLMFAST_DISABLE_TRITON``).
"""

from __future__ import annotations

import torch

from vlmfast.ops import reference
from vlmfast.ops.dispatch import use_triton
from vlmfast.ops.reference import EncodeOutput


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
    backend: str = "auto",
) -> EncodeOutput:
    """Top-k encode ``relu(topk((x - b_dec) @ W_enc.T + b_enc))``; see the reference."""
    if use_triton(x, "topk_encode", backend):
        from vlmfast.ops import triton_ops

        return triton_ops.topk_encode(
            x,
            w_enc,
            b_enc,
            b_dec,
            k,
            dead_mask=dead_mask,
            k_aux=k_aux,
            compute_dtype=compute_dtype,
        )
    return reference.topk_encode(
        x, w_enc, b_enc, b_dec, k, dead_mask=dead_mask, k_aux=k_aux, compute_dtype=compute_dtype
    )


def sparse_decode(
    values: torch.Tensor,
    indices: torch.Tensor,
    w_dec: torch.Tensor,
    *,
    deterministic: bool = True,
    backend: str = "auto",
) -> torch.Tensor:
    """``sum_j values[n,j] * W_dec[indices[n,j]]`` (no bias); see the reference."""
    if use_triton(values, "sparse_decode", backend):
        from vlmfast.ops import triton_ops

        return triton_ops.sparse_decode(values, indices, w_dec, deterministic=deterministic)
    return reference.sparse_decode(values, indices, w_dec)


def sparse_decode_many(
    parts: list[tuple[torch.Tensor, torch.Tensor]],
    w_dec: torch.Tensor,
    *,
    deterministic: bool = True,
    backend: str = "auto",
) -> list[torch.Tensor]:
    """:func:`sparse_decode` of several ``(values, indices)`` pairs sharing ``W_dec``."""
    if use_triton(parts[0][0], "sparse_decode", backend):
        from vlmfast.ops import triton_ops

        return [
            triton_ops.sparse_decode(v, i, w_dec, deterministic=deterministic) for v, i in parts
        ]
    return reference.sparse_decode_many(parts, w_dec)


__all__ = ["EncodeOutput", "reference", "sparse_decode", "sparse_decode_many", "topk_encode"]
