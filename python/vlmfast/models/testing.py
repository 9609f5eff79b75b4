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
