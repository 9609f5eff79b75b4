"""Matryoshka SAE training forward: nested prefixes of the dictionary, BatchTopK inside.

The latents are ordered in groups (``SAEConfig.groups``); prefix ``i`` is the first
``sum(groups[:i+1])`` latents. One BatchTopK selection is shared; each prefix
reconstructs the input from its own latents only, and the loss is the sum of every
prefix's FVU (:func:`prefix_losses` adds all but the full one, which the trainer counts
as its FVU), so early latents learn coarse features that stand on their own.

The flat codes are row-major with latents ascending inside a row, so each (row, group)
pair is a contiguous bag: one embedding bag decodes every group of every row, and a
cumulative sum over the groups gives all prefix reconstructions for the price of one
decode.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from vlmfast.ops.flat_codes import flat_decode_many, offsets_of
from vlmfast.sae.batchtopk import aux_part, batch_codes
from vlmfast.sae.model import ForwardOutput, TopKSAE


def group_ends(sae: TopKSAE, device: torch.device) -> torch.Tensor:
    """``[G]`` int64 exclusive end latent of each nested prefix."""
    groups = sae.cfg.groups or [sae.n_latents]
    return torch.tensor(groups, dtype=torch.int64, device=device).cumsum(0)


def forward_train(
    sae: TopKSAE,
    xs: torch.Tensor,
    dead_mask: torch.Tensor | None = None,
    *,
    compute_dtype: torch.dtype | None = None,
) -> ForwardOutput:
    """Training forward: BatchTopK codes and the reconstruction of every prefix."""
    bc = batch_codes(sae, xs, dead_mask, compute_dtype)
    c = bc.codes
    n, ends = xs.shape[0], group_ends(sae, xs.device)
    n_groups = ends.numel()
    bag = c.rows * n_groups + torch.bucketize(c.indices, ends, right=True)
    main = (c.values, c.indices, offsets_of(bag, n * n_groups))
    decoded = flat_decode_many([main, *aux_part(bc)], sae.W_dec)
    cumulative = decoded[0].view(n, n_groups, -1).cumsum(1) + sae.b_dec
    prefix = list(cumulative.unbind(1))
    return ForwardOutput(
        prefix[-1],
        c.values,
        c.indices,
        decoded[1] if len(decoded) > 1 else None,
        bc.aux_indices,
        rows=c.rows,
        prefix_recons=prefix,
        min_selected=bc.min_selected,
    )


def prefix_losses(
    xs: torch.Tensor,
    out: ForwardOutput,
    fvu: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> torch.Tensor | None:
    """Sum of the FVU of every prefix but the full one (``fvu(x, recon)``); None for one group."""
    if not out.prefix_recons or len(out.prefix_recons) < 2:
        return None
    losses = [fvu(xs, recon) for recon in out.prefix_recons[:-1]]
    return torch.stack(losses).sum()
