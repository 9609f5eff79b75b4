"""Convert transformers' ``CLIPModel`` / ``SiglipModel`` weights into vlmfast's internal format.

The internal format (state-dict keys and tower settings) is the one every loader
produces and the hooked model consumes; see ``vlmfast.models.config``. This module
only renames and splits tensors and reads the HF config; it builds no model.

What the HF models do, and how it maps:

- CLIP vision: conv patch embedding without bias, class embedding, ``pre_layrnorm``,
  pre-norm blocks, CLS pooling, ``post_layernorm`` on the pooled token, then
  ``visual_projection`` without bias. LayerNorm acts per token, so LN-then-pick-CLS is
  the same computation; vlmfast uses ``final_ln="pre_pool"`` as the open_clip loader
  does, so ``image.ln_final`` is [B, T, d] whichever loader built the model.
- CLIP text: causal blocks, ``final_layer_norm`` on all tokens (``"pre_pool"``),
  pooling at the EOT token. transformers pools at ``argmax(input_ids)`` when the
  config's ``eos_token_id`` is 2 (old configs), otherwise at the first position equal
  to ``eos_token_id``; the two agree when the EOT id is the largest id in the
  vocabulary, as in every released CLIP (49407 of 49408). vlmfast pools at the argmax
  and refuses configs where the two would differ.
- SigLIP vision: conv patch embedding with bias, no class token, no ``ln_pre``,
  ``post_layernorm`` on all tokens, then the MAP head ``head`` (probe, multi-head
  attention, layernorm, MLP) and no projection (the embedding is the MAP output).
- SigLIP text: bidirectional blocks, ``final_layer_norm`` on all tokens, the last
  token pooled (whatever it is, padding included, as transformers does), ``head``
  Linear with bias as the projection.
- Pair: ``logit_scale`` (log of the scale) and, for SigLIP, ``logit_bias``.

SigLIP2 checkpoints with fixed resolution are ``model_type="siglip"`` on the hub and
load here unchanged; NaFlex (``model_type="siglip2"``) ones are refused with a message.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from vlmfast.errors import ModelLoadError

_ACTIVATIONS = {
    "quick_gelu": "quick_gelu",
    "gelu": "gelu",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_new": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
}

SUPPORTED_MODEL_TYPES = ("clip", "siglip")


@dataclass
class ConvertedPair:
    """A converted HF model: tower settings (TowerConfig field values), pair settings, weights."""

    family: str
    """``"clip"`` or ``"siglip"``."""
    image: dict[str, Any]
    """TowerConfig fields of the image tower."""
    text: dict[str, Any]
    """TowerConfig fields of the text tower."""
    pair: dict[str, Any] = field(default_factory=dict)
    """PairConfig fields besides the towers (embed_dim, has_logit_bias, init values)."""
    state: dict[str, torch.Tensor] = field(default_factory=dict)
    """Weights under the internal keys (``image.…``, ``text.…``, ``logit_scale``, ``logit_bias``)."""


def _activation(name: str, where: str) -> str:
    act = _ACTIVATIONS.get(str(name))
    if act is None:
        raise ModelLoadError(
            f"{where}.hidden_act={name!r} is not supported; vlmfast handles {sorted(_ACTIVATIONS)}"
        )
    return act


def _head_dim(cfg: Any, where: str) -> int:
    width, heads = int(cfg.hidden_size), int(cfg.num_attention_heads)
    if width % heads:
        raise ModelLoadError(
            f"{where}.hidden_size={width} is not divisible by num_attention_heads={heads}"
        )
    return width // heads


def _take(sd: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    try:
        return sd[key]
    except KeyError:
        raise ModelLoadError(f"hf checkpoint is missing the weight {key!r}") from None


def _copy_linear(
    out: dict[str, torch.Tensor],
    dst: str,
    sd: Mapping[str, torch.Tensor],
    src: str,
    bias: bool = True,
) -> None:
    out[f"{dst}.weight"] = _take(sd, f"{src}.weight")
    if bias:
        out[f"{dst}.bias"] = _take(sd, f"{src}.bias")


def _copy_blocks(
    out: dict[str, torch.Tensor], tower: str, sd: Mapping[str, torch.Tensor], src: str, layers: int
) -> None:
    for i in range(layers):
        s, d = f"{src}.encoder.layers.{i}", f"{tower}.blocks.{i}"
        _copy_linear(out, f"{d}.ln1", sd, f"{s}.layer_norm1")
        for name in ("q", "k", "v"):
            _copy_linear(out, f"{d}.attn.{name}", sd, f"{s}.self_attn.{name}_proj")
        _copy_linear(out, f"{d}.attn.out", sd, f"{s}.self_attn.out_proj")
        _copy_linear(out, f"{d}.ln2", sd, f"{s}.layer_norm2")
        _copy_linear(out, f"{d}.mlp.fc1", sd, f"{s}.mlp.fc1")
        _copy_linear(out, f"{d}.mlp.fc2", sd, f"{s}.mlp.fc2")


def _tower_common(cfg: Any, modality: str, where: str) -> dict[str, Any]:
    return {
        "modality": modality,
        "width": int(cfg.hidden_size),
        "layers": int(cfg.num_hidden_layers),
        "heads": int(cfg.num_attention_heads),
        "head_dim": _head_dim(cfg, where),
        "mlp_width": int(cfg.intermediate_size),
        "act": _activation(cfg.hidden_act, where),
        "ln_eps": float(cfg.layer_norm_eps),
    }


def _check_square(vcfg: Any) -> None:
    if int(vcfg.image_size) % int(vcfg.patch_size):
        raise ModelLoadError(
            f"vision_config.image_size={vcfg.image_size} is not a multiple of patch_size={vcfg.patch_size}"
        )


def convert_clip(config: Any, sd: Mapping[str, torch.Tensor]) -> ConvertedPair:
    """Internal tower settings and weights of a transformers ``CLIPModel``."""
    vcfg, tcfg = config.vision_config, config.text_config
    _check_square(vcfg)
    embed_dim = int(config.projection_dim)
    vocab = int(tcfg.vocab_size)
    eos = tcfg.eos_token_id
    if eos is not None and int(eos) != 2 and int(eos) != vocab - 1:
        raise ModelLoadError(
            f"text_config.eos_token_id={eos} is neither 2 nor the largest token id ({vocab - 1}): "
            "transformers pools CLIP text at the first EOS token, vlmfast at argmax(token id); "
            "they would disagree for this config"
        )
    image = _tower_common(vcfg, "image", "vision_config") | {
        "pre_norm": True,
        "final_ln": "pre_pool",
        "pool": "cls",
        "embed_dim": embed_dim,
        "proj_bias": False,
        "image_size": int(vcfg.image_size),
        "patch_size": int(vcfg.patch_size),
        "class_token": True,
        "patch_bias": False,
    }
    text = _tower_common(tcfg, "text", "text_config") | {
        "pre_norm": False,
        "final_ln": "pre_pool",
        "pool": "eot",
        "embed_dim": embed_dim,
        "proj_bias": False,
        "vocab_size": vocab,
        "context_length": int(tcfg.max_position_embeddings),
        "causal": True,
    }
    out: dict[str, torch.Tensor] = {}
    v = "vision_model"
    out["image.patch_embed.weight"] = _take(sd, f"{v}.embeddings.patch_embedding.weight")
    out["image.cls_token"] = _take(sd, f"{v}.embeddings.class_embedding")
    out["image.pos_embed"] = _take(sd, f"{v}.embeddings.position_embedding.weight")
    _copy_linear(out, "image.ln_pre", sd, f"{v}.pre_layrnorm")
    _copy_blocks(out, "image", sd, v, image["layers"])
    _copy_linear(out, "image.ln_final", sd, f"{v}.post_layernorm")
    out["image.proj.weight"] = _take(sd, "visual_projection.weight")
    t = "text_model"
    out["text.token_embed.weight"] = _take(sd, f"{t}.embeddings.token_embedding.weight")
    out["text.pos_embed"] = _take(sd, f"{t}.embeddings.position_embedding.weight")
    _copy_blocks(out, "text", sd, t, text["layers"])
    _copy_linear(out, "text.ln_final", sd, f"{t}.final_layer_norm")
    out["text.proj.weight"] = _take(sd, "text_projection.weight")
    out["logit_scale"] = _take(sd, "logit_scale").reshape(())
    pair = {"embed_dim": embed_dim, "logit_bias": False}
    return ConvertedPair("clip", image, text, pair, out)


def _copy_map_head(
    out: dict[str, torch.Tensor], sd: Mapping[str, torch.Tensor], h: str, width: int
) -> None:
    """SigLIP's MAP pooling head (probe, fused attention, LayerNorm, MLP) into ``image.pool``."""
    out["image.pool.probe"] = _take(sd, f"{h}.probe").reshape(1, 1, width)
    in_w = _take(sd, f"{h}.attention.in_proj_weight")
    in_b = _take(sd, f"{h}.attention.in_proj_bias")
    for name, w, b in zip(("q", "k", "v"), in_w.chunk(3, dim=0), in_b.chunk(3, dim=0)):
        out[f"image.pool.attn.{name}.weight"] = w
        out[f"image.pool.attn.{name}.bias"] = b
    _copy_linear(out, "image.pool.attn.out", sd, f"{h}.attention.out_proj")
    _copy_linear(out, "image.pool.ln", sd, f"{h}.layernorm")
    _copy_linear(out, "image.pool.mlp.fc1", sd, f"{h}.mlp.fc1")
    _copy_linear(out, "image.pool.mlp.fc2", sd, f"{h}.mlp.fc2")


def convert_siglip(config: Any, sd: Mapping[str, torch.Tensor]) -> ConvertedPair:
    """Internal tower settings and weights of a transformers ``SiglipModel``."""
    vcfg, tcfg = config.vision_config, config.text_config
    _check_square(vcfg)
    if not getattr(vcfg, "vision_use_head", True):
        raise ModelLoadError(
            "vision_config.vision_use_head=False: this SigLIP has no MAP pooling head, so "
            "SiglipModel has no image embedding to compare with text"
        )
    width = int(vcfg.hidden_size)
    text_width = int(tcfg.hidden_size)
    embed_dim = int(getattr(tcfg, "projection_size", None) or text_width)
    if embed_dim != width:
        raise ModelLoadError(
            f"text_config.projection_size={embed_dim} differs from vision_config.hidden_size={width}; "
            "SigLIP's image embedding is the MAP head output (no projection), so they must match"
        )
    image = _tower_common(vcfg, "image", "vision_config") | {
        "pre_norm": False,
        "final_ln": "pre_pool",
        "pool": "map",
        "embed_dim": None,
        "proj_bias": False,
        "image_size": int(vcfg.image_size),
        "patch_size": int(vcfg.patch_size),
        "class_token": False,
        "patch_bias": True,
    }
    text = _tower_common(tcfg, "text", "text_config") | {
        "pre_norm": False,
        "final_ln": "pre_pool",
        "pool": "last",
        "embed_dim": embed_dim,
        "proj_bias": True,
        "vocab_size": int(tcfg.vocab_size),
        "context_length": int(tcfg.max_position_embeddings),
        "causal": False,
    }
    out: dict[str, torch.Tensor] = {}
    v = "vision_model"
    _copy_linear(out, "image.patch_embed", sd, f"{v}.embeddings.patch_embedding")
    out["image.pos_embed"] = _take(sd, f"{v}.embeddings.position_embedding.weight")
    _copy_blocks(out, "image", sd, v, image["layers"])
    _copy_linear(out, "image.ln_final", sd, f"{v}.post_layernorm")
    _copy_map_head(out, sd, f"{v}.head", width)
    t = "text_model"
    out["text.token_embed.weight"] = _take(sd, f"{t}.embeddings.token_embedding.weight")
    out["text.pos_embed"] = _take(sd, f"{t}.embeddings.position_embedding.weight")
    _copy_blocks(out, "text", sd, t, text["layers"])
    _copy_linear(out, "text.ln_final", sd, f"{t}.final_layer_norm")
    _copy_linear(out, "text.proj", sd, f"{t}.head")
    out["logit_scale"] = _take(sd, "logit_scale").reshape(())
    out["logit_bias"] = _take(sd, "logit_bias").reshape(())
    pair = {"embed_dim": embed_dim, "logit_bias": True}
    return ConvertedPair("siglip", image, text, pair, out)


def convert(config: Any, sd: Mapping[str, torch.Tensor]) -> ConvertedPair:
    """Dispatch on ``config.model_type``; ModelLoadError for anything but CLIP and SigLIP."""
    model_type = str(getattr(config, "model_type", ""))
    if model_type == "clip":
        return convert_clip(config, sd)
    if model_type == "siglip":
        return convert_siglip(config, sd)
    hint = ""
    if model_type == "siglip2":
        hint = (
            " (SigLIP2 NaFlex checkpoints use variable-resolution patch inputs; the fixed-"
            "resolution SigLIP2 checkpoints, e.g. google/siglip2-base-patch16-224, are "
            "model_type 'siglip' and load)"
        )
    raise ModelLoadError(
        f"hf model_type {model_type!r} is not supported; vlmfast loads {list(SUPPORTED_MODEL_TYPES)}{hint}"
    )
