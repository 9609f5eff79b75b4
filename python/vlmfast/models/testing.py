"""Tiny random open_clip models for tests (never downloads anything).

``tiny_open_clip("ViT-B-32")`` shrinks an open_clip architecture config to a few
hundred thousand weights while keeping its structure (activation, pooling, LayerNorm
placement, causal mask, projection bias, timm SigLIP trunk); ``tiny_pair`` converts it.
Other areas' tests use these to get a real model in milliseconds.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from typing import Any
from unittest import mock

import torch
from torch import nn

#: the tiny SigLIP-style image tower keeps SO400M's odd sizes: d_head 72, MLP width 4304.
SIGLIP_TINY_WIDTH = 144
SIGLIP_TINY_HEADS = 2
SIGLIP_TINY_MLP = 4304
SIGLIP_TINY_IMAGE = 56


def tiny_config(arch: str) -> dict[str, Any]:
    """open_clip's config for ``arch`` with small widths, depths and image size."""
    import open_clip

    cfg = open_clip.get_model_config(arch)
    if cfg is None:
        raise ValueError(f"unknown open_clip architecture {arch!r}")
    cfg = copy.deepcopy(cfg)
    vision, text = cfg["vision_cfg"], cfg["text_cfg"]
    if vision.get("timm_model_name"):
        vision["image_size"] = SIGLIP_TINY_IMAGE
        cfg["embed_dim"] = SIGLIP_TINY_WIDTH
        text.update(width=SIGLIP_TINY_WIDTH, heads=SIGLIP_TINY_HEADS, layers=2)
    else:
        patch = vision.get("patch_size", 16)
        vision.update(width=64, layers=2, head_width=16, image_size=patch * 3)
        cfg["embed_dim"] = 48
        text.update(width=64, heads=4, layers=2)
    text.update(context_length=12, vocab_size=300)
    text.pop("hf_tokenizer_name", None)
    text.pop("tokenizer_kwargs", None)
    return cfg


@contextlib.contextmanager
def _small_timm_trunks() -> Iterator[None]:
    """Makes open_clip build timm ViT trunks small (2 blocks, width 144, MLP 4304)."""
    import open_clip.timm_model as otm

    real = otm.timm.create_model

    def small(name: str, **kwargs: Any) -> nn.Module:
        kwargs.update(
            embed_dim=SIGLIP_TINY_WIDTH,
            depth=2,
            num_heads=SIGLIP_TINY_HEADS,
            mlp_ratio=(SIGLIP_TINY_MLP + 0.5) / SIGLIP_TINY_WIDTH,
            img_size=SIGLIP_TINY_IMAGE,
        )
        model: nn.Module = real(name, **kwargs)
        return model

    with mock.patch.object(otm.timm, "create_model", small):
        yield


def build_open_clip(cfg: dict[str, Any], seed: int = 0, jitter: float = 0.02) -> nn.Module:
    """An open_clip ``CLIP``/``CustomTextCLIP`` from a config dict, random weights, eval mode.

    ``jitter`` adds Gaussian noise to every parameter so that zero-initialised biases and
    unit LayerNorm weights are exercised by parity tests.
    """
    import open_clip

    cfg = copy.deepcopy(cfg)
    custom = cfg.pop("custom_text", False)
    cls = open_clip.CustomTextCLIP if custom else open_clip.CLIP
    torch.manual_seed(seed)
    with _small_timm_trunks():
        model = cls(**cfg)
    if jitter:
        gen = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=gen) * jitter)
    return model.eval()


def tiny_open_clip(arch: str = "ViT-B-32", seed: int = 0) -> nn.Module:
    """A tiny random open_clip model with the structure of ``arch``."""
    return build_open_clip(tiny_config(arch), seed=seed)


def random_tokens(
    n: int, context_length: int = 12, vocab: int = 300, seed: int = 0
) -> torch.Tensor:
    """Token ids [n, context_length] with a CLIP-like EOT (the row's largest id) and padding."""
    gen = torch.Generator().manual_seed(seed)
    tok = torch.zeros(n, context_length, dtype=torch.long)
    for i in range(n):
        length = int(torch.randint(2, context_length + 1, (1,), generator=gen))
        tok[i, : length - 1] = torch.randint(1, vocab - 1, (length - 1,), generator=gen)
        tok[i, length - 1] = vocab - 1  # EOT: the largest id
    return tok


def tiny_pair(arch: str = "ViT-B-32", seed: int = 0) -> Any:
    """``tiny_open_clip(arch)`` converted to a ``HookedPair`` (token ids from ``random_tokens``)."""
    from vlmfast.models.loading.open_clip import from_open_clip

    return from_open_clip(tiny_open_clip(arch, seed), spec=f"tiny:{arch}", name=f"tiny-{arch}")


def random_pixels(pair: Any, n: int, seed: int = 0) -> torch.Tensor:
    """Random pixel tensor [n, 3, S, S] for ``pair``'s image size."""
    s = pair.config.image.image_size
    return torch.randn(n, 3, s, s, generator=torch.Generator().manual_seed(seed))


def random_pair_tokens(pair: Any, n: int, seed: int = 0) -> torch.Tensor:
    """``random_tokens`` sized for ``pair``'s text tower."""
    cfg = pair.config.text
    return random_tokens(n, cfg.context_length, cfg.vocab_size, seed=seed)


def _identity_ln(x: torch.Tensor, ctx: Any = None) -> torch.Tensor:
    return x


def linear_pair(seed: int = 0, layers: int = 2, mlp_width: int = 12) -> Any:
    """A pair whose towers are affine in their inputs, for tests where first-order
    estimates must be exact: q/k weights zero (constant attention), identity MLP
    nonlinearity, identity LayerNorms, no final LayerNorm. Width 16, 2 heads, 16 px images
    of 8 px patches (CLS pooling), captions of 6 tokens with EOT = 19 (the largest id)."""
    from vlmfast.models.config import PairConfig, TowerConfig
    from vlmfast.models.pair import HookedPair

    common: dict[str, Any] = dict(
        width=16, layers=layers, heads=2, head_dim=8, mlp_width=mlp_width, final_ln="none"
    )
    cfg = PairConfig(
        image=TowerConfig("image", **common, image_size=16, patch_size=8, pool="cls", embed_dim=8),
        text=TowerConfig("text", **common, vocab_size=20, context_length=6, pool="eot", embed_dim=8),
    )  # fmt: skip
    torch.manual_seed(seed)
    pair = HookedPair(cfg).eval()
    with torch.no_grad():
        for tower in (pair.image, pair.text):
            block: Any
            for block in tower.blocks:
                inner = block.attn.heads * block.attn.head_dim
                block.attn.in_proj_weight[: 2 * inner] = 0
                block.attn.in_proj_bias.normal_()
                block.attn.in_proj_bias[: 2 * inner] = 0
                block.mlp.act = lambda x: x
                block.ln1.forward = _identity_ln
                block.ln2.forward = _identity_ln
    return pair


def linear_pair_inputs(seed: int, n: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pixels [n, 3, 16, 16], tokens [n, 6])`` for :func:`linear_pair`, EOT at position 4."""
    px = torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))
    gen = torch.Generator().manual_seed(seed)
    tok = torch.randint(1, 18, (n, 6), generator=gen)
    tok[:, 4] = 19
    tok[:, 5] = 0
    return px, tok
