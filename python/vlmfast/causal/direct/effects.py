"""``vf.causal.direct_effects``: each head's and MLP's direct contribution to the logit.

    de = vf.causal.direct_effects(pair, images=px, texts=tok, tower="image", null=200)
    de.heads              # [layers, heads] mean direct contribution to the matched logit
    de.mlps               # [layers]
    de.check()            # max |sum of parts + logit bias - logit| (<= 1e-4)
    de.null.heads_p       # [layers, heads] two-sided permutation p-values (mismatched pairs)

The embedding of the decomposed tower is split exactly into parts (``decompose.py``:
frozen final-LN scale, frozen MAP pattern, the MAP MLP as its own term). The matched
logit ``scale * <img_i, txt_i> / (|img_i| |txt_i|) + bias`` is linear in those parts
once both norms are frozen at their clean values, so part ``k`` contributes
``scale * <part_k(i), other_i> / (|emb_i| |other_i|)`` and the contributions plus the
logit bias sum to the logit.

**Null** (every effect has one): the same contributions with image/caption pairs
mismatched, ``null`` seeded random derangements (no example keeps its own partner), the
norms of each tower still frozen at its own clean value. A head whose direct
contribution only tracks, say, the image's overall norm or a constant direction
contributes as much to a mismatched caption as to the matched one; its p-value is
large. P-values are two-sided around the null mean, ``(1 + #{|null - m| >= |obs - m|}) /
(1 + K)``, and the null interval is the central ``level`` range of the K draw means.
Mismatched captions can still be true of the image (two one-object scenes with the same
caption): the null is then conservative.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vlmfast.causal.core import backend
from vlmfast.causal.core.conventions import check_choice
from vlmfast.causal.direct.decompose import TowerParts, required_hooks
from vlmfast.causal.direct.parts import check_pair, embeds, run_parts
from vlmfast.causal.direct.result import (
    DirectEffects,
    DirectEffectsBoth,
    DirectEffectsNull,
    matched_contributions,
)
from vlmfast.errors import InputError, ShapeError

TOWER_CHOICES = ("image", "text", "both")


def direct_effects(
    pair: Any,
    images: Any = None,
    texts: Any = None,
    *,
    tower: str = "image",
    null: int = 0,
    seed: int = 0,
    level: float = 0.95,
    batch_size: int = 64,
    dtype: torch.dtype = torch.float64,
) -> DirectEffects | DirectEffectsBoth:
    """Direct contribution of every head and MLP of ``tower`` to the matched logit.

    Args:
        pair: a HookedPair (eval mode).
        images: pixels (or PIL images); image i is paired with caption i.
        texts: token ids (or strings); caption i is paired with image i.
        tower: ``"image"``, ``"text"`` or ``"both"`` (each tower against the other's clean
            embedding; a ``DirectEffectsBoth``).
        null: number of mismatched-pair draws for the null (0: no null).
        seed: seed of the null's derangements.
        level: coverage of the null interval.
        batch_size: rows per forward (memory bound).
        dtype: dtype of the decomposition arithmetic (the model runs in its own dtype).

    Returns:
        Per head and MLP (and the other terms), its contribution to the matched logit
            (logit units, summing to the logit up to ``check()``), with the null when
            ``null > 0``; a ``DirectEffectsBoth`` for ``tower="both"``.

    Raises:
        InputError: a pair in training mode, an unknown tower, ``null < 0``, ``level``
            outside (0, 1), ``batch_size < 1``, missing inputs or no examples.
        ShapeError: images and captions do not pair up.
    """
    check_pair(pair)
    check_choice(tower, TOWER_CHOICES, "tower")
    if not isinstance(null, int) or null < 0:
        raise InputError(f"null must be a number of draws >= 0, got {null!r}")
    if not 0 < level < 1:
        raise InputError(f"level must be in (0, 1), got {level!r}")
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    towers = ["image", "text"] if tower == "both" else [tower]
    for t in towers:
        required_hooks(pair, t)
    px, tok = _paired_inputs(pair, images, texts)
    scale_t, bias_t = backend.logit_scale_bias(pair)
    scale = float(scale_t.double().exp())
    bias = float(bias_t) if bias_t is not None else None
    inputs = {"image": px, "text": tok}
    results: dict[str, DirectEffects] = {}
    for t in towers:
        o = "text" if t == "image" else "image"
        tp = run_parts(pair, t, inputs[t], batch_size, dtype)
        other = embeds(pair, o, inputs[o], batch_size, dtype)
        cos = (tp.embed * other).sum(-1) / (tp.embed.norm(dim=-1) * other.norm(dim=-1))
        logit = scale * cos + (bias or 0.0)
        results[t] = DirectEffects(
            tower=t,
            part_names=tp.names,
            embed_parts=tp.parts,
            embed=tp.embed,
            other=other,
            logit=logit,
            logit_scale=scale,
            logit_bias=bias,
            n_layers=tp.layers,
            n_heads=tp.heads,
            null=_null(tp, other, scale, null, seed, level, pair.dtype) if null else None,
        )
    if tower == "both":
        return DirectEffectsBoth(results["image"], results["text"])
    return results[tower]


def _paired_inputs(pair: Any, images: Any, texts: Any) -> tuple[Tensor, Tensor]:
    """Pixels and token ids on the pair's device; ShapeError unless paired by index."""
    if images is None or texts is None:
        raise InputError("direct_effects needs images= and texts= (caption i describes image i)")
    px, tok = backend.as_inputs(pair, images, texts)
    if px.shape[0] != tok.shape[0]:
        raise ShapeError(
            f"images and texts are paired by index, so they need the same length; got "
            f"{px.shape[0]} images and {tok.shape[0]} texts"
        )
    if px.shape[0] == 0:
        raise InputError("direct_effects got no examples")
    return px, tok


def _derangement(n: int, gen: torch.Generator) -> Tensor:
    """A uniformly random permutation of ``n`` with no fixed point (rejection sampling)."""
    ar = torch.arange(n)
    while True:
        perm = torch.randperm(n, generator=gen)
        if not bool((perm == ar).any()):
            return perm


def _null(
    tp: TowerParts,
    other: Tensor,
    scale: float,
    draws: int,
    seed: int,
    level: float,
    model_dtype: torch.dtype,
) -> DirectEffectsNull:
    n = tp.embed.shape[0]
    if n < 2:
        raise InputError(f"the mismatched-pairs null needs at least 2 examples, got {n}")
    gen = torch.Generator().manual_seed(seed)
    layers, heads = tp.layers, tp.heads
    idx = list(range(*tp.head_slice.indices(len(tp.names))))
    idx += list(range(*tp.mlp_slice.indices(len(tp.names))))
    sub = tp.parts[idx]  # [LH + L, B, E]
    obs = matched_contributions(sub, tp.embed, other, scale).mean(-1)
    null = torch.empty(draws, len(idx), dtype=obs.dtype)
    for k in range(draws):
        perm = _derangement(n, gen)
        null[k] = matched_contributions(sub, tp.embed, other[perm], scale).mean(-1)
    center = null.mean(0)
    # differences below the model's float rounding are ties (identical captions embedded
    # in one batch differ in the last bits)
    tol = 16 * torch.finfo(model_dtype).eps * (obs.abs() + center.abs()) + 1e-12
    p = (1 + ((null - center).abs() >= (obs - center).abs() - tol).sum(0)) / (1 + draws)
    alpha = (1 - level) / 2
    q = torch.quantile(null, torch.tensor([alpha, 1 - alpha], dtype=null.dtype), dim=0)
    lh = layers * heads
    return DirectEffectsNull(
        draws=draws,
        seed=seed,
        level=level,
        heads_draws=null[:, :lh].reshape(draws, layers, heads),
        mlps_draws=null[:, lh:],
        heads_p=p[:lh].reshape(layers, heads),
        mlps_p=p[lh:],
        heads_interval=q[:, :lh].reshape(2, layers, heads),
        mlps_interval=q[:, lh:],
    )


def save_json(result: DirectEffects | DirectEffectsBoth, path: str | Path) -> Path:
    """Writes ``result.to_json()`` to ``path``.

    Returns:
        The file written, ``path``.
    """
    out = Path(path)
    out.write_text(json.dumps(result.to_json(), indent=2))
    return out


__all__ = ["TOWER_CHOICES", "direct_effects", "save_json"]
