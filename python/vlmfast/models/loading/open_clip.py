"""open_clip -> HookedPair: config and weights read from an open_clip model instance.

Supports ``open_clip.CLIP`` and ``open_clip.CustomTextCLIP`` whose image tower is an
open_clip ``VisionTransformer`` or a timm ``VisionTransformer`` trunk (SigLIP) and whose
text tower is an open_clip ``TextTransformer``. Anything else (ResNet towers, HF text
towers, CoCa, layer scale, qk-norm, patch dropout in training) raises ``ModelLoadError``
naming the unsupported part.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from vlmfast.errors import ModelLoadError
from vlmfast.models.config import PairConfig, TowerConfig

if TYPE_CHECKING:
    from vlmfast.models.pair import HookedPair

StateDict = dict[str, Tensor]


def _unsupported(what: str) -> ModelLoadError:
    return ModelLoadError(f"open_clip model not supported by vlmfast's hooked towers: {what}")


_ACT_CLASSES = {"QuickGELU": "quick_gelu", "GELUTanh": "gelu_tanh", "GELU": "gelu"}


def _act_name(module: Any) -> str:
    if isinstance(module, nn.GELU):
        return "gelu_tanh" if module.approximate == "tanh" else "gelu"
    name = _ACT_CLASSES.get(type(module).__name__)  # open_clip's and timm's own classes
    if name is None:
        raise _unsupported(f"activation {type(module).__name__}")
    return name


def _is_identity(module: Any) -> bool:
    return module is None or isinstance(module, nn.Identity)


def _ln(sd: StateDict, key: str, ln: Any) -> float:
    if not isinstance(ln, nn.LayerNorm):
        raise _unsupported(f"{key} is {type(ln).__name__}, expected LayerNorm")
    sd[f"{key}.weight"] = ln.weight.detach()
    sd[f"{key}.bias"] = ln.bias.detach()
    return float(ln.eps)


def _qkv(sd: StateDict, key: str, weight: Tensor, bias: Tensor | None) -> None:
    for part, w in zip("qkv", weight.detach().chunk(3, dim=0)):
        sd[f"{key}.{part}.weight"] = w
    b = torch.zeros(weight.shape[0]) if bias is None else bias.detach()
    for part, bb in zip("qkv", b.chunk(3, dim=0)):
        sd[f"{key}.{part}.bias"] = bb


def _linear(sd: StateDict, key: str, lin: Any, scale: Tensor | None = None) -> None:
    """A Linear's weight and bias; ``scale`` (a LayerScale gamma) is folded into both."""
    if not isinstance(lin, nn.Linear):
        raise _unsupported(f"{key} is {type(lin).__name__}, expected Linear")
    weight = lin.weight.detach()
    bias = lin.bias.detach() if lin.bias is not None else torch.zeros(lin.out_features)
    if scale is not None:
        weight = weight * scale[:, None]
        bias = bias * scale
    sd[f"{key}.weight"] = weight
    sd[f"{key}.bias"] = bias


def _layer_scale(module: Any, where: str) -> Tensor | None:
    """The gamma of a LayerScale (open_clip ``ls_*``, timm ``ls*``), ``None`` for Identity.

    A LayerScale right after a Linear is folded into it: ``g*(Wx+b) = (gW)x + gb``, so
    ``attn_out``/``mlp_out`` stay the blocks' exact writes to the residual stream.
    """
    if _is_identity(module):
        return None
    gamma = getattr(module, "gamma", None)
    if not isinstance(gamma, Tensor):
        raise _unsupported(f"{where} {type(module).__name__}")
    return gamma.detach()


def _openclip_blocks(sd: StateDict, prefix: str, transformer: Any) -> dict[str, Any]:
    """Blocks of an open_clip ``Transformer``; returns the shared shape facts."""
    facts: dict[str, Any] = {}
    for i, blk in enumerate(transformer.resblocks):
        if type(blk).__name__ != "ResidualAttentionBlock":
            raise _unsupported(f"{prefix} block type {type(blk).__name__} (custom blocks)")
        if hasattr(blk, "ln_1_kv"):
            raise _unsupported(f"{prefix} cross-attention blocks")
        b = f"{prefix}.blocks.{i}"
        eps = _ln(sd, f"{b}.ln1", blk.ln_1)
        attn = blk.attn
        _qkv(sd, f"{b}.attn", attn.in_proj_weight, attn.in_proj_bias)
        _linear(sd, f"{b}.attn.out", attn.out_proj, _layer_scale(blk.ls_1, prefix))
        _ln(sd, f"{b}.ln2", blk.ln_2)
        _linear(sd, f"{b}.mlp.fc1", blk.mlp.c_fc)
        _linear(sd, f"{b}.mlp.fc2", blk.mlp.c_proj, _layer_scale(blk.ls_2, prefix))
        facts = {
            "heads": attn.num_heads,
            "head_dim": attn.head_dim,
            "mlp_width": blk.mlp.c_fc.out_features,
            "act": _act_name(blk.mlp.gelu),
            "ln_eps": eps,
        }
    return facts


def _timm_blocks(sd: StateDict, prefix: str, blocks: Any) -> dict[str, Any]:
    facts: dict[str, Any] = {}
    for i, blk in enumerate(blocks):
        if type(blk).__name__ != "Block":
            raise _unsupported(f"{prefix} timm block type {type(blk).__name__}")
        attn = blk.attn
        for name in ("q_norm", "k_norm", "norm"):
            if not _is_identity(getattr(attn, name, None)):
                raise _unsupported(f"{prefix} timm attention {name}")
        if not _is_identity(getattr(blk.mlp, "norm", None)):
            raise _unsupported(f"{prefix} timm MLP norm")
        b = f"{prefix}.blocks.{i}"
        eps = _ln(sd, f"{b}.ln1", blk.norm1)
        _qkv(sd, f"{b}.attn", attn.qkv.weight, attn.qkv.bias)
        _linear(sd, f"{b}.attn.out", attn.proj, _layer_scale(blk.ls1, prefix))
        _ln(sd, f"{b}.ln2", blk.norm2)
        _linear(sd, f"{b}.mlp.fc1", blk.mlp.fc1)
        _linear(sd, f"{b}.mlp.fc2", blk.mlp.fc2, _layer_scale(blk.ls2, prefix))
        facts = {
            "heads": attn.num_heads,
            "head_dim": attn.head_dim,
            "mlp_width": blk.mlp.fc1.out_features,
            "act": _act_name(blk.mlp.act),
            "ln_eps": eps,
        }
    return facts


def _square(value: Any, what: str) -> int:
    if isinstance(value, int):
        return value
    a, b = tuple(value)
    if a != b:
        raise _unsupported(f"non-square {what} {tuple(value)}")
    return int(a)


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


def default_preprocess(model: nn.Module) -> Callable[[Any], Tensor] | None:
    """open_clip's eval transform for ``model`` (from its stored preprocess config)."""
    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2

    try:
        cfg = open_clip.get_model_preprocess_cfg(model)
        fields = {k: v for k, v in cfg.items() if k in PreprocessCfg.__dataclass_fields__}
        transform: Callable[[Any], Tensor] = image_transform_v2(
            PreprocessCfg(**fields), is_train=False
        )
        return transform
    except Exception:
        return None


class LazyTokenizer:
    """Builds an open_clip tokenizer on first use (SigLIP's needs a HF tokenizer download)."""

    def __init__(self, factory: Callable[[], Any], what: str) -> None:
        self._factory = factory
        self._what = what
        self._tok: Any = None

    def __call__(self, texts: list[str]) -> Tensor:
        if self._tok is None:
            try:
                self._tok = self._factory()
            except Exception as err:
                raise ModelLoadError(
                    f"cannot build the tokenizer of {self._what} ({type(err).__name__}: "
                    f"{str(err)[:300]}); offline, build the pair with "
                    "vlmfast.models.from_open_clip(model, tokenizer=...) or pass token ids"
                ) from err
        return torch.as_tensor(self._tok(texts), dtype=torch.long)


def _default_tokenizer(
    model: nn.Module, config: PairConfig
) -> Callable[[list[str]], Tensor] | None:
    if config.text.vocab_size != 49408:
        return None
    import open_clip

    ctx = config.text.context_length
    return LazyTokenizer(
        lambda: open_clip.SimpleTokenizer(context_length=ctx), "open_clip SimpleTokenizer"
    )


def from_open_clip(
    model: nn.Module,
    *,
    tokenizer: Callable[[list[str]], Tensor] | None = None,
    preprocess: Callable[[Any], Tensor] | None = None,
    spec: str = "open_clip:custom",
    name: str = "",
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    share_memory: bool = False,
) -> HookedPair:
    """A ``HookedPair`` with the weights of an open_clip model instance (any ViT config).

    The pair gets its own copy of the weights unless ``share_memory=True`` (then weights
    the formats store alike share storage with ``model``: changing one changes the other).

    ``tokenizer`` (list[str] -> LongTensor [B, T]) defaults to open_clip's CLIP BPE
    tokenizer when the vocabulary is CLIP's (49408 tokens); ``preprocess`` (PIL image ->
    [3, H, W]) defaults to the model's open_clip eval transform.
    """
    from vlmfast.models.pair import HookedPair

    config, sd = convert_open_clip(model, name=name)
    if tokenizer is None:
        tokenizer = _default_tokenizer(model, config)
    if preprocess is None:
        preprocess = default_preprocess(model)
    if device is None:
        device = next(model.parameters()).device
    return HookedPair.from_state_dict(
        config,
        sd,
        tokenizer=tokenizer,
        preprocess=preprocess,
        spec=spec,
        device=device,
        dtype=dtype,
        share_memory=share_memory,
    )


def load_open_clip(
    arch: str,
    pretrained: str | None = None,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> HookedPair:
    """``open_clip:<arch>``: random init (``pretrained=None``), a tag, or a checkpoint path."""
    import open_clip

    known = open_clip.list_models()
    if arch not in known:
        close = difflib.get_close_matches(arch, known, n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ModelLoadError(f"unknown open_clip architecture {arch!r}{hint}")
    if pretrained is not None and not os.path.isfile(pretrained):
        tags = open_clip.list_pretrained_tags_by_model(arch)
        if pretrained not in tags:
            looks_like_path = os.sep in pretrained or pretrained.endswith(
                (".pt", ".bin", ".safetensors")
            )
            what = "no such checkpoint file" if looks_like_path else "unknown pretrained tag"
            raise ModelLoadError(
                f"{what} {pretrained!r} for open_clip:{arch}; known tags: {tags or 'none'}; "
                "or pass the path of a local checkpoint file"
            )
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            arch, pretrained=pretrained, device="cpu"
        )
    except Exception as err:
        if pretrained is not None and not os.path.isfile(pretrained):
            raise ModelLoadError(
                f"cannot fetch open_clip:{arch} weights {pretrained!r} (offline or not cached: "
                f"{str(err)[:300]}). Download the checkpoint elsewhere and pass its local path: "
                f"vf.load_pair('open_clip:{arch}', pretrained='/path/to/open_clip_pytorch_model.bin')"
            ) from err
        raise ModelLoadError(f"open_clip could not build {arch!r} ({pretrained=}): {err}") from err
    model.eval()
    tokenizer = LazyTokenizer(lambda: open_clip.get_tokenizer(arch), f"open_clip:{arch}")
    tag = f"@{pretrained}" if pretrained and not os.path.isfile(pretrained) else ""
    return from_open_clip(
        model,
        tokenizer=tokenizer,
        preprocess=preprocess,
        spec=f"open_clip:{arch}{tag}",
        name=arch,
        device=device,
        dtype=dtype,
        share_memory=True,  # the open_clip model is discarded
    )
