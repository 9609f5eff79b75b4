"""open_clip model -> ``(PairConfig, internal state dict)``: the image tower (an open_clip
ViT or a timm ViT trunk with SigLIP's MAP head), the text tower and the pair scalars."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vlmfast.models.config import PairConfig, TowerConfig
from vlmfast.models.loading.open_clip_layers import (
    StateDict,
    _is_identity,
    _linear,
    _ln,
    _openclip_blocks,
    _qkv,
    _square,
    _timm_blocks,
    _unsupported,
)


def _convert_openclip_vit(sd: StateDict, visual: Any) -> TowerConfig:
    if visual.attn_pool is not None:
        raise _unsupported("image attentional pooler (CoCa)")
    if visual.pool_type not in ("tok", "avg"):
        raise _unsupported(f"image pool_type {visual.pool_type!r}")
    if getattr(visual, "output_tokens", False):
        raise _unsupported("output_tokens=True")
    p = "image"
    sd[f"{p}.patch_embed.weight"] = visual.conv1.weight.detach()
    if visual.conv1.bias is not None:
        sd[f"{p}.patch_embed.bias"] = visual.conv1.bias.detach()
    sd[f"{p}.cls_token"] = visual.class_embedding.detach()
    sd[f"{p}.pos_embed"] = visual.positional_embedding.detach()
    pre_norm = not _is_identity(visual.ln_pre)
    if pre_norm:
        _ln(sd, f"{p}.ln_pre", visual.ln_pre)
    facts = _openclip_blocks(sd, p, visual.transformer)
    _ln(sd, f"{p}.ln_final", visual.ln_post)
    embed_dim = None
    if visual.proj is not None:
        sd[f"{p}.proj.weight"] = visual.proj.detach().T.contiguous()
        embed_dim = int(visual.proj.shape[1])
    return TowerConfig(
        modality="image",
        width=int(visual.conv1.out_channels),
        layers=len(visual.transformer.resblocks),
        pre_norm=pre_norm,
        final_ln="post_pool" if visual.final_ln_after_pool else "pre_pool",
        pool="cls" if visual.pool_type == "tok" else "mean",
        embed_dim=embed_dim,
        proj_bias=False,
        image_size=_square(visual.image_size, "image_size"),
        patch_size=_square(visual.patch_size, "patch_size"),
        class_token=True,
        patch_bias=visual.conv1.bias is not None,
        **facts,
    )


def _convert_map_head(sd: StateDict, pool: Any, eps: float) -> dict[str, Any]:
    if type(pool).__name__ != "AttentionPoolLatent":
        raise _unsupported(f"timm attention pool {type(pool).__name__}")
    if pool.pos_embed is not None or pool.latent_len != 1 or not _is_identity(pool.q_norm):
        raise _unsupported("timm MAP head with pos_embed, several latents or qk-norm")
    if pool.mlp is None or not isinstance(pool.proj, nn.Linear):
        raise _unsupported("timm MAP head without output projection/MLP")
    p = "image.pool"
    sd[f"{p}.probe"] = pool.latent.detach()
    w = torch.cat([pool.q.weight, pool.kv.weight], dim=0)
    b = torch.cat([pool.q.bias, pool.kv.bias], dim=0) if pool.q.bias is not None else None
    _qkv(sd, f"{p}.attn", w, b)
    _linear(sd, f"{p}.attn.out", pool.proj)
    pool_eps = _ln(sd, f"{p}.ln", pool.norm)
    if abs(pool_eps - eps) > 0:
        raise _unsupported(f"MAP head LayerNorm eps {pool_eps} differs from the tower's {eps}")
    _linear(sd, f"{p}.mlp.fc1", pool.mlp.fc1)
    _linear(sd, f"{p}.mlp.fc2", pool.mlp.fc2)
    return {"pool_heads": pool.num_heads, "pool_mlp_width": pool.mlp.fc1.out_features}


def _check_timm_trunk(trunk: Any) -> None:
    if type(trunk).__name__ != "VisionTransformer":
        raise _unsupported(f"timm trunk {type(trunk).__name__} (only timm VisionTransformer)")
    if getattr(trunk, "reg_token", None) is not None:
        raise _unsupported("timm register tokens")
    if getattr(trunk, "dynamic_img_size", False):
        raise _unsupported("timm dynamic_img_size")
    if type(trunk.patch_embed).__name__ != "PatchEmbed":
        raise _unsupported(f"timm patch embedding {type(trunk.patch_embed).__name__}")
    if not _is_identity(trunk.patch_embed.norm):
        raise _unsupported("timm patch-embedding norm")
    if not _is_identity(trunk.norm) and not _is_identity(trunk.fc_norm):
        raise _unsupported("timm trunk with both norm and fc_norm")


def _timm_embeddings(sd: StateDict, trunk: Any) -> bool:
    """Patch, CLS and position embeddings; returns whether there is a CLS token."""
    p = "image"
    proj = trunk.patch_embed.proj
    sd[f"{p}.patch_embed.weight"] = proj.weight.detach()
    if proj.bias is not None:
        sd[f"{p}.patch_embed.bias"] = proj.bias.detach()
    class_token = trunk.cls_token is not None
    pos = trunk.pos_embed.detach()[0]
    if class_token:
        sd[f"{p}.cls_token"] = trunk.cls_token.detach().reshape(-1)
        if trunk.no_embed_class:  # the CLS token gets no position embedding
            pos = torch.cat([torch.zeros_like(pos[:1]), pos], dim=0)
    sd[f"{p}.pos_embed"] = pos
    return class_token


def _timm_final_ln(sd: StateDict, trunk: Any) -> str:
    if not _is_identity(trunk.norm):
        _ln(sd, "image.ln_final", trunk.norm)
        return "pre_pool"
    if not _is_identity(trunk.fc_norm):
        _ln(sd, "image.ln_final", trunk.fc_norm)
        return "post_pool"
    return "none"


def _timm_projection(sd: StateDict, visual: Any) -> tuple[int | None, bool]:
    """The trunk's classifier head or open_clip's head Linear as the projection."""
    heads = [
        m for m in (visual.trunk.head, *visual.head) if not isinstance(m, nn.Identity | nn.Dropout)
    ]
    if len(heads) > 1 or (heads and not isinstance(heads[0], nn.Linear)):
        raise _unsupported(f"timm image head {[type(h).__name__ for h in heads]}")
    if not heads:
        return None, False
    lin = heads[0]
    sd["image.proj.weight"] = lin.weight.detach()
    if lin.bias is not None:
        sd["image.proj.bias"] = lin.bias.detach()
    return int(lin.out_features), lin.bias is not None


def _convert_timm_vit(sd: StateDict, visual: Any) -> TowerConfig:
    trunk = visual.trunk
    _check_timm_trunk(trunk)
    class_token = _timm_embeddings(sd, trunk)
    pre_norm = not _is_identity(trunk.norm_pre)
    if pre_norm:
        _ln(sd, "image.ln_pre", trunk.norm_pre)
    facts = _timm_blocks(sd, "image", trunk.blocks)
    final_ln = _timm_final_ln(sd, trunk)
    extra: dict[str, Any] = {}
    global_pool = trunk.global_pool
    if global_pool == "map":
        pool = "map"
        extra = _convert_map_head(sd, trunk.attn_pool, facts["ln_eps"])
    elif global_pool == "token":
        pool = "cls"
    elif global_pool == "avg" and not getattr(trunk, "pool_include_prefix", False):
        pool = "mean"
    else:
        raise _unsupported(f"timm global_pool {global_pool!r}")
    embed_dim, proj_bias = _timm_projection(sd, visual)
    patch = trunk.patch_embed
    return TowerConfig(
        modality="image",
        width=int(patch.proj.out_channels),
        layers=len(trunk.blocks),
        pre_norm=pre_norm,
        final_ln=final_ln,  # type: ignore[arg-type]
        pool=pool,  # type: ignore[arg-type]
        embed_dim=embed_dim,
        proj_bias=proj_bias,
        image_size=_square(patch.img_size, "image_size"),
        patch_size=_square(patch.patch_size, "patch_size"),
        class_token=class_token,
        patch_bias=patch.proj.bias is not None,
        **facts,
        **extra,
    )


_TEXT_POOLS = {"argmax": "eot", "eos": "eos", "last": "last", "first": "first"}


def _eos_id(text: Any) -> int:
    eos = getattr(text, "eos_id", None)
    if eos is None:
        eos = getattr(text, "text_eos_id", None)  # open_clip.CLIP keeps it here
    if eos is None:
        raise _unsupported("text pool_type 'eos' without an eos id")
    return int(eos)


def _convert_text(sd: StateDict, text: Any) -> TowerConfig:
    """``text`` is a TextTransformer or the CLIP model itself (same attribute names)."""
    if getattr(text, "cls_emb", None) is not None:
        raise _unsupported("text CLS embedding (CoCa)")
    if getattr(text, "use_pad_mask", False):
        raise _unsupported("text padding mask")
    pool_type = getattr(text, "pool_type", None) or getattr(text, "text_pool_type", "argmax")
    if pool_type not in _TEXT_POOLS:
        raise _unsupported(f"text pool_type {pool_type!r}")
    p = "text"
    sd[f"{p}.token_embed.weight"] = text.token_embedding.weight.detach()
    sd[f"{p}.pos_embed"] = text.positional_embedding.detach()
    facts = _openclip_blocks(sd, p, text.transformer)
    _ln(sd, f"{p}.ln_final", text.ln_final)
    proj = text.text_projection
    embed_dim: int | None = None
    proj_bias = False
    if isinstance(proj, nn.Linear):
        _linear(sd, f"{p}.proj", proj)
        if proj.bias is None:
            del sd[f"{p}.proj.bias"]
        proj_bias = proj.bias is not None
        embed_dim = proj.out_features
    elif proj is not None:
        sd[f"{p}.proj.weight"] = proj.detach().T.contiguous()
        embed_dim = int(proj.shape[1])
    return TowerConfig(
        modality="text",
        width=int(text.token_embedding.weight.shape[1]),
        layers=len(text.transformer.resblocks),
        final_ln="pre_pool",
        pool=_TEXT_POOLS[pool_type],  # type: ignore[arg-type]
        embed_dim=embed_dim,
        proj_bias=proj_bias,
        vocab_size=int(text.token_embedding.weight.shape[0]),
        context_length=int(text.positional_embedding.shape[0]),
        causal=text.attn_mask is not None,
        eos_token_id=_eos_id(text) if pool_type == "eos" else None,
        **facts,
    )


def convert_open_clip(model: nn.Module, name: str = "") -> tuple[PairConfig, StateDict]:
    """Reads an open_clip model into ``(PairConfig, internal state dict)``.

    Raises ``ModelLoadError`` naming the first part vlmfast cannot represent.
    """
    m: Any = model
    cls = type(model).__name__
    if cls not in ("CLIP", "CustomTextCLIP"):
        raise _unsupported(f"model class {cls} (CoCa and others are not two-tower CLIPs)")
    sd: StateDict = {}
    visual = m.visual
    vcls = type(visual).__name__
    if vcls == "VisionTransformer":
        image_cfg = _convert_openclip_vit(sd, visual)
    elif vcls == "TimmModel":
        image_cfg = _convert_timm_vit(sd, visual)
    else:
        raise _unsupported(f"image tower {vcls} (only ViTs)")
    text = m.text if cls == "CustomTextCLIP" else m
    if cls == "CustomTextCLIP" and type(text).__name__ != "TextTransformer":
        raise _unsupported(f"text tower {type(text).__name__} (only open_clip TextTransformer)")
    text_cfg = _convert_text(sd, text)
    sd["logit_scale"] = m.logit_scale.detach().reshape(())
    has_bias = getattr(m, "logit_bias", None) is not None
    if has_bias:
        sd["logit_bias"] = m.logit_bias.detach().reshape(())
    config = PairConfig(image=image_cfg, text=text_cfg, logit_bias=has_bias, name=name)
    return config, {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
