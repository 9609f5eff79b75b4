"""The internal weight format: flat state-dict keys <-> the hooked modules' parameters.

Keys, per tower prefix ``image.`` / ``text.`` (nn.Linear convention, [out, in]):

- image: ``patch_embed.weight`` [d, 3, p, p], ``patch_embed.bias`` (optional),
  ``cls_token`` [d] (optional), ``pos_embed`` [T, d], ``ln_pre.{weight,bias}`` (optional)
- text: ``token_embed.weight`` [vocab, d], ``pos_embed`` [context_length, d]
- ``blocks.{L}.ln1.{weight,bias}``, ``blocks.{L}.attn.{q,k,v}.{weight,bias}`` ([H*dh, d],
  [H*dh]), ``blocks.{L}.attn.out.{weight,bias}`` ([d, H*dh], [d]),
  ``blocks.{L}.ln2.{weight,bias}``, ``blocks.{L}.mlp.fc1.{weight,bias}`` ([mlp, d]),
  ``blocks.{L}.mlp.fc2.{weight,bias}`` ([d, mlp])
- ``ln_final.{weight,bias}``, ``proj.weight`` [embed_dim, d], ``proj.bias`` (optional)
- SigLIP MAP head: ``pool.probe`` [1, 1, d], ``pool.attn.{q,k,v,out}.{weight,bias}``,
  ``pool.ln.{weight,bias}``, ``pool.mlp.fc1/fc2.{weight,bias}``
- pair level: ``logit_scale`` (the log of the scale), ``logit_bias`` (SigLIP).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import torch
from torch import Tensor, nn

from vlmfast.errors import ModelLoadError, ShapeError
from vlmfast.models.layers import MLP, Attention, Block, LayerNorm
from vlmfast.models.towers import ImageTower, TextTower, Tower


class PairModules(Protocol):
    """What the weight format reads and writes: two towers and the pair-level scalars
    (a ``HookedPair``; the format does not depend on the pair class itself)."""

    @property
    def image(self) -> ImageTower: ...

    @property
    def text(self) -> TextTower: ...

    @property
    def logit_scale(self) -> nn.Parameter: ...

    @property
    def logit_bias(self) -> nn.Parameter | None: ...


# internal key -> (parameter, index of the q/k/v chunk or None)
_Slot = tuple[nn.Parameter, int | None]


def _ln_slots(prefix: str, ln: LayerNorm) -> dict[str, _Slot]:
    return {f"{prefix}.weight": (ln.weight, None), f"{prefix}.bias": (ln.bias, None)}


def _attn_slots(prefix: str, attn: Attention) -> dict[str, _Slot]:
    slots: dict[str, _Slot] = {}
    for i, part in enumerate("qkv"):
        slots[f"{prefix}.{part}.weight"] = (attn.in_proj_weight, i)
        slots[f"{prefix}.{part}.bias"] = (attn.in_proj_bias, i)
    slots[f"{prefix}.out.weight"] = (attn.out_weight, None)
    slots[f"{prefix}.out.bias"] = (attn.out_bias, None)
    return slots


def _mlp_slots(prefix: str, mlp: MLP) -> dict[str, _Slot]:
    return {
        f"{prefix}.fc1.weight": (mlp.fc1_weight, None),
        f"{prefix}.fc1.bias": (mlp.fc1_bias, None),
        f"{prefix}.fc2.weight": (mlp.fc2_weight, None),
        f"{prefix}.fc2.bias": (mlp.fc2_bias, None),
    }


def tower_slots(tower: Tower) -> dict[str, _Slot]:
    """Internal keys (with the tower prefix) of one tower and where each one lives."""
    p = tower.prefix
    slots: dict[str, _Slot] = {}
    if isinstance(tower, ImageTower):
        slots[f"{p}.patch_embed.weight"] = (tower.patch_weight, None)
        if tower.patch_bias is not None:
            slots[f"{p}.patch_embed.bias"] = (tower.patch_bias, None)
        if tower.cls_token is not None:
            slots[f"{p}.cls_token"] = (tower.cls_token, None)
        slots[f"{p}.pos_embed"] = (tower.pos_embed, None)
        if tower.ln_pre is not None:
            slots.update(_ln_slots(f"{p}.ln_pre", tower.ln_pre))
    elif isinstance(tower, TextTower):
        slots[f"{p}.token_embed.weight"] = (tower.token_embed, None)
        slots[f"{p}.pos_embed"] = (tower.pos_embed, None)
    for i, block in enumerate(tower.blocks):
        assert isinstance(block, Block)
        b = f"{p}.blocks.{i}"
        slots.update(_ln_slots(f"{b}.ln1", block.ln1))
        slots.update(_attn_slots(f"{b}.attn", block.attn))
        slots.update(_ln_slots(f"{b}.ln2", block.ln2))
        slots.update(_mlp_slots(f"{b}.mlp", block.mlp))
    if tower.ln_final is not None:
        slots.update(_ln_slots(f"{p}.ln_final", tower.ln_final))
    if tower.pool_head is not None:
        head = tower.pool_head
        slots[f"{p}.pool.probe"] = (head.probe, None)
        slots.update(_attn_slots(f"{p}.pool.attn", head.attn))
        slots.update(_ln_slots(f"{p}.pool.ln", head.ln))
        slots.update(_mlp_slots(f"{p}.pool.mlp", head.mlp))
    if tower.proj_weight is not None:
        slots[f"{p}.proj.weight"] = (tower.proj_weight, None)
        if tower.proj_bias is not None:
            slots[f"{p}.proj.bias"] = (tower.proj_bias, None)
    return slots


def pair_slots(pair: PairModules) -> dict[str, _Slot]:
    """Every internal key of a pair and where it lives."""
    slots = {**tower_slots(pair.image), **tower_slots(pair.text)}
    slots["logit_scale"] = (pair.logit_scale, None)
    if pair.logit_bias is not None:
        slots["logit_bias"] = (pair.logit_bias, None)
    return slots


def _target(param: nn.Parameter, chunk: int | None) -> Tensor:
    if chunk is None:
        return param.data
    return param.data.chunk(3, dim=0)[chunk]


def load_into(pair: PairModules, state_dict: Mapping[str, Tensor], *, share: bool = False) -> None:
    """Copies an internal-format state dict into ``pair``; every key must match exactly.

    ``share=True`` lets unfused parameters take over the given tensors' storage when dtype
    and device already match (no copy; for loaders that discard the source model).
    Raises ``ModelLoadError`` listing missing or unexpected keys and ``ShapeError``
    naming a key whose shape differs from the config's.
    """
    slots = pair_slots(pair)
    missing = sorted(set(slots) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(slots))
    if missing or unexpected:
        raise ModelLoadError(
            "state dict does not match the config: "
            f"missing {missing[:12]}{' ...' if len(missing) > 12 else ''}, "
            f"unexpected {unexpected[:12]}{' ...' if len(unexpected) > 12 else ''}"
        )
    with torch.no_grad():
        for key, (param, chunk) in slots.items():
            value = torch.as_tensor(state_dict[key])
            target = _target(param, chunk)
            if key in ("logit_scale", "logit_bias") and value.numel() == 1:
                value = value.reshape(target.shape)
            if tuple(value.shape) != tuple(target.shape):
                raise ShapeError(
                    f"weight {key!r} has shape {tuple(value.shape)}, the config expects "
                    f"{tuple(target.shape)}"
                )
            if (
                share
                and chunk is None
                and value.dtype == target.dtype
                and value.device == target.device
            ):
                param.data = value.detach()
            else:
                target.copy_(value.to(dtype=target.dtype, device=target.device))


def export_state_dict(pair: PairModules) -> dict[str, Tensor]:
    """The pair's weights in the internal format (copies, detached)."""
    out: dict[str, Tensor] = {}
    for key, (param, chunk) in pair_slots(pair).items():
        out[key] = _target(param, chunk).detach().clone()
    return out
