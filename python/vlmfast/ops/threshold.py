"""Threshold-shaped SAE encodes: JumpReLU / BatchTopK inference and batch-wide top-k.

``threshold_encode`` computes ``pre = (x - b_dec) @ W_enc.T + b_enc`` and keeps, in every
row, the latents with ``pre > threshold[latent]`` (``threshold`` is ``[n_latents]`` or a
0-dim tensor broadcast to all latents): JumpReLU's per-latent thresholds, or BatchTopK's
global inference threshold. The dense masked pre-activations come from a fused Triton
kernel on CUDA (``vlmfast._kernels.sae_threshold_encode``) or from
:func:`masked_preacts_reference` (the specification) otherwise; the rows are then
compacted to padded sparse codes.

Padded codes: ``values`` / ``indices`` are ``[N, w]`` with ``w`` the largest number of
active latents of any row in the call (at least 1); a row with fewer active latents has
trailing slots with value 0 (indices: distinct inactive latents of the row, so every
index is valid and none repeats in a row); active slots are ordered by value descending, ties by lowest latent index. Such
codes decode with :func:`vlmfast.ops.sparse_decode` (zeros add nothing) and count in L0
only where ``values > 0``.

The selection is differentiable through :func:`vlmfast.ops.flat_codes.sparse_preacts`,
whose backward touches only the selected latents.
"""

from __future__ import annotations

import torch

from vlmfast.errors import ShapeError
from vlmfast.ops.dispatch import use_triton
from vlmfast.ops.flat_codes import sparse_preacts
from vlmfast.ops.reference import EncodeOutput, encoder_preacts


def _check_threshold(threshold: torch.Tensor, n_latents: int) -> torch.Tensor:
    """``threshold`` as a contiguous ``[n_latents]`` tensor; raises ShapeError otherwise."""
    if threshold.ndim == 0:
        return threshold.expand(n_latents).contiguous()
    if threshold.shape != (n_latents,):
        raise ShapeError(
            f"threshold must be 0-dim or [{n_latents}] (one per latent), got {list(threshold.shape)}"
        )
    return threshold.contiguous()


def masked_preacts_reference(
    x: torch.Tensor,
    w_enc: torch.Tensor,
    b_enc: torch.Tensor,
    b_dec: torch.Tensor,
    threshold: torch.Tensor,
) -> torch.Tensor:
    """``[N, n_latents]`` pre-activations where ``pre > threshold``, ``-inf`` elsewhere."""
    pre = encoder_preacts(x, w_enc, b_enc, b_dec)
    thr = _check_threshold(threshold.to(pre.dtype), w_enc.shape[0])
    return pre.masked_fill_(pre <= thr, float("-inf"))


def masked_preacts(
    x: torch.Tensor,
    w_enc: torch.Tensor,
    b_enc: torch.Tensor,
    b_dec: torch.Tensor,
    threshold: torch.Tensor,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    """Dispatches :func:`masked_preacts_reference` (no autograd): Triton on CUDA tensors."""
    with torch.no_grad():
        if use_triton(x, "threshold_encode", backend):
            from vlmfast.ops import threshold_triton

            thr = _check_threshold(threshold.float(), w_enc.shape[0])
            return threshold_triton.masked_preacts(x, w_enc, b_enc, b_dec, thr)
        return masked_preacts_reference(x, w_enc, b_enc, b_dec, threshold)


def compact_rows(masked: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(pre [N, w], indices [N, w], active [N, w])`` of a ``-inf``-masked dense matrix.

    ``w`` is the largest count of finite entries in a row (at least 1), so no two active
    entries can tie at the selection boundary; active slots are ordered by value
    descending, ties by lowest index; inactive slots hold pre 0 and distinct inactive
    latents of the row.
    """
    n, m = masked.shape
    if n == 0:
        empty = masked.new_zeros((0, 1))
        return empty, empty.long(), empty.bool()
    width = min(m, max(1, int((masked > float("-inf")).sum(1).max())))
    vals, idx = masked.topk(width, dim=1, sorted=False)
    by_index = idx.argsort(dim=1)
    idx, vals = idx.gather(1, by_index), vals.gather(1, by_index)
    by_value = torch.sort(vals, dim=1, descending=True, stable=True).indices
    idx, vals = idx.gather(1, by_value), vals.gather(1, by_value)
    active = vals > float("-inf")
    return vals.masked_fill(~active, 0.0), idx, active


def threshold_select(
    x: torch.Tensor,
    w_enc: torch.Tensor,
    b_enc: torch.Tensor,
    b_dec: torch.Tensor,
    threshold: torch.Tensor,
    *,
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(pre [N, w], indices, active)`` of the latents above ``threshold`` (padded codes);
    ``pre`` is differentiable (sparse backward). Raises ShapeError for a bad threshold."""
    masked = masked_preacts(x, w_enc, b_enc, b_dec, threshold, backend=backend)
    pre, idx, active = compact_rows(masked)
    offsets = torch.arange(idx.shape[0], device=idx.device) * idx.shape[1]
    part = (pre.flatten(), idx.flatten(), offsets)
    (pre_g,) = sparse_preacts(x, w_enc, b_enc, b_dec, [part])
    return pre_g.view(idx.shape), idx, active


def threshold_encode(
    x: torch.Tensor,
    w_enc: torch.Tensor,
    b_enc: torch.Tensor,
    b_dec: torch.Tensor,
    threshold: torch.Tensor,
    *,
    backend: str = "auto",
) -> EncodeOutput:
    """JumpReLU / BatchTopK-inference encode: padded ``(values, indices)`` with ``values =
    relu(pre)`` where ``pre > threshold`` and 0 in the padding (see the module docstring)."""
    pre, idx, active = threshold_select(x, w_enc, b_enc, b_dec, threshold, backend=backend)
    return EncodeOutput(torch.relu(pre) * active, idx)


__all__ = [
    "compact_rows",
    "masked_preacts",
    "masked_preacts_reference",
    "threshold_encode",
    "threshold_select",
]
