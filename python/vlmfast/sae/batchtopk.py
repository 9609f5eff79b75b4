"""BatchTopK training forward (Bussmann et al. 2024, arXiv 2412.06410).

The ``k * N`` largest pre-activations of the whole batch fire (a row may use more or
fewer than ``k`` latents; the mean is ``k``), kept as flat codes
(:mod:`vlmfast.ops.flat_codes`). The inference encode cannot see a batch, so the SAE
keeps a running estimate of the smallest activation the batch selection kept
(:func:`update_threshold`, weight ``SAEConfig.threshold_ema``) and fires a latent when
its pre-activation exceeds it. AuxK over dead latents works as in the top-k SAE.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlmfast.ops.flat_codes import FlatCodes, batch_topk_select, flat_decode_many, sparse_preacts
from vlmfast.ops.reference import reused_preacts, topk_lowest_index
from vlmfast.sae import distributed as ddp
from vlmfast.sae.batch_select_ddp import global_batch_topk_select
from vlmfast.sae.model import ForwardOutput, TopKSAE


@dataclass
class BatchCodes:
    """Codes of one batch: the flat BatchTopK selection and the optional AuxK one."""

    codes: FlatCodes
    """Selected latents; ``codes.values`` are the differentiable ReLU'd activations."""
    aux_values: torch.Tensor | None
    """``[N, k_aux]`` AuxK activations among dead latents (None without AuxK)."""
    aux_indices: torch.Tensor | None
    min_selected: float | None
    """Smallest positive selected activation (None: nothing positive was selected)."""


def _aux_selection(
    pre: torch.Tensor, dead_mask: torch.Tensor | None, k_aux: int
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Per-row top ``k_aux`` pre-activations among dead latents ``(pre, indices)``, or None."""
    if dead_mask is None or k_aux <= 0:
        return None
    dead_idx = dead_mask.nonzero().flatten()
    k_eff = min(k_aux, int(dead_idx.numel()))
    if k_eff == 0:
        return None
    vals, local = topk_lowest_index(pre.index_select(1, dead_idx), k_eff)
    return vals, dead_idx[local]


def batch_codes(
    sae: TopKSAE,
    xs: torch.Tensor,
    dead_mask: torch.Tensor | None,
    compute_dtype: torch.dtype | None,
) -> BatchCodes:
    """BatchTopK codes of scaled inputs ``xs`` (differentiable, sparse backward)."""
    n = xs.shape[0]
    with torch.no_grad():
        pre = reused_preacts(xs.to(compute_dtype or xs.dtype), sae.W_enc, sae.b_enc, sae.b_dec)
        if ddp.is_distributed():
            sel = global_batch_topk_select(pre, sae.k)
        else:
            sel = batch_topk_select(pre, sae.k)
        aux = _aux_selection(pre, dead_mask, sae.cfg.aux_k) if sae.cfg.auxk_coef > 0 else None
        del pre
    parts = [(sel.values, sel.indices, sel.offsets)]
    if aux is not None:
        width = aux[1].shape[1]
        row_starts = torch.arange(n, device=xs.device) * width
        parts.append((aux[0].flatten(), aux[1].flatten(), row_starts))
    pre_g = sparse_preacts(xs, sae.W_enc, sae.b_enc, sae.b_dec, parts)
    positive = sel.values[sel.values > 0]
    min_sel = float(positive.min()) if positive.numel() else None
    codes = FlatCodes(torch.relu(pre_g[0]), sel.indices, sel.rows, sel.offsets)
    if aux is None:
        return BatchCodes(codes, None, None, min_sel)
    return BatchCodes(codes, torch.relu(pre_g[1]).view(n, -1), aux[1], min_sel)


def aux_part(
    out: BatchCodes,
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """The AuxK codes as a :func:`flat_decode_many` part (none without AuxK)."""
    if out.aux_values is None or out.aux_indices is None:
        return []
    n, width = out.aux_indices.shape
    starts = torch.arange(n, device=out.aux_indices.device) * width
    return [(out.aux_values.flatten(), out.aux_indices.flatten(), starts)]


def forward_train(
    sae: TopKSAE,
    xs: torch.Tensor,
    dead_mask: torch.Tensor | None = None,
    *,
    compute_dtype: torch.dtype | None = None,
) -> ForwardOutput:
    """BatchTopK training forward on scaled inputs; returns the reconstruction and codes."""
    bc = batch_codes(sae, xs, dead_mask, compute_dtype)
    c = bc.codes
    decoded = flat_decode_many([(c.values, c.indices, c.offsets), *aux_part(bc)], sae.W_dec)
    return ForwardOutput(
        decoded[0] + sae.b_dec,
        c.values,
        c.indices,
        decoded[1] if len(decoded) > 1 else None,
        bc.aux_indices,
        rows=c.rows,
        min_selected=bc.min_selected,
    )


@torch.no_grad()
def update_threshold(sae: TopKSAE, min_selected: float | None) -> None:
    """Moves the inference threshold towards this batch's smallest selected activation
    (the first update sets it); a batch that selected nothing positive leaves it."""
    if min_selected is None:
        return
    if sae.threshold_updates == 0:
        sae.threshold.fill_(min_selected)
    else:
        rate = sae.cfg.threshold_ema
        sae.threshold.mul_(1.0 - rate).add_(rate * min_selected)
    sae.threshold_updates += 1
