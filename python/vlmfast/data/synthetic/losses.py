"""The training loss of the tiny CLIP: symmetric InfoNCE with per-image hard negatives
(``contrastive_loss``), the text tower on trimmed length buckets, the probes' term."""

from __future__ import annotations

import itertools
from typing import Any

from vlmfast.data.synthetic.aux_probes import AuxProbes
from vlmfast.data.synthetic.dataset import SyntheticSample


def encode_text_trimmed(model: Any, tokens: Any) -> Any:
    """``model.encode_text`` computed on length buckets cut to their longest sequence.

    Exact for a causal text tower pooled at the EOT (argmax) token: positions after
    a sequence's EOT never influence it. Saves most of the padding compute.
    """
    import torch

    lengths = (tokens != 0).sum(dim=1)
    out = torch.empty((tokens.shape[0], model.text_projection.shape[1]), dtype=torch.float32)
    edges = [0, 8, 12, tokens.shape[1]]
    for lo, hi in itertools.pairwise(edges):
        rows = ((lengths > lo) & (lengths <= hi)).nonzero().flatten()
        if rows.numel() == 0:
            continue
        length = int(lengths[rows].max())
        tok = tokens[rows, :length]
        x = model.token_embedding(tok) + model.positional_embedding[:length]
        x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
        x = model.ln_final(x)
        x = x[torch.arange(x.shape[0]), tok.argmax(dim=-1)] @ model.text_projection
        out = out.index_put((rows,), x)
    return out


def contrastive_loss(
    img: Any, txt: Any, neg: Any, neg_owner: Any, pos: Any, logit_scale: Any
) -> Any:
    """Symmetric InfoNCE on each pair's own caption, with per-image hard negatives.

    img [B, D], txt [B, D], neg [N, D] (normalised); neg_owner [N] image index of
    each negative; pos [B, B] bool (caption j true of image i).

    The target of image i is its own caption i only. Other in-batch captions that
    are also true of image i (``pos``) are removed from its denominator (they are
    not negatives), and likewise other images a caption is true of. The target
    must not be the *set* of true captions: a multi-positive target lets an image
    satisfy the loss with an order-free caption ("a red circle and a blue square")
    scoring far above both a relation caption and its swapped-relation negative,
    so the hard negative never gets a gradient (the cause of the first bundled
    model's chance-level relations).
    """
    import torch

    b = img.shape[0]
    eye = torch.eye(b, dtype=torch.bool, device=img.device)
    other_true = pos & ~eye
    scale = logit_scale.exp()
    it = (scale * img @ txt.T).masked_fill(other_true, float("-inf"))  # [B, B]
    ineg = scale * img @ neg.T  # [B, N]
    own = neg_owner[None, :] == torch.arange(b, device=img.device)[:, None]
    ineg = ineg.masked_fill(~own, float("-inf"))
    target = torch.arange(b, device=img.device)
    loss_i = torch.nn.functional.cross_entropy(torch.cat([it, ineg], dim=1), target)
    loss_t = torch.nn.functional.cross_entropy(it.T, target)
    return 0.5 * (loss_i + loss_t)


def step_loss(
    model: Any,
    px: Any,
    tokens: Any,
    owner: Any,
    pos: Any,
    samples: list[SyntheticSample],
    probes: AuxProbes | None,
    aux_weight: float,
) -> Any:
    """The step's loss: ``contrastive_loss`` on the batch (captions first in
    ``tokens``, then the hard negatives), plus the weighted probe losses."""
    import torch

    img_raw = model.encode_image(px)
    txt_raw = encode_text_trimmed(model, tokens)
    img = torch.nn.functional.normalize(img_raw, dim=-1)
    txt = torch.nn.functional.normalize(txt_raw, dim=-1)
    b = len(samples)
    loss = contrastive_loss(img, txt[:b], txt[b:], owner, pos, model.logit_scale)
    if probes is not None:
        loss = loss + aux_weight * probes.loss(img_raw, txt_raw[:b], samples)
    return loss
