"""open_clip / timm layers -> internal state-dict keys: LayerNorms, fused qkv, Linears
with LayerScale folded in, and the transformer blocks of both libraries."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from vlmfast.errors import ModelLoadError

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
