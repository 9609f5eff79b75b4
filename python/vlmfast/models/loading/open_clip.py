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
from vlmfast.models.config import PairConfig
from vlmfast.models.loading.open_clip_convert import convert_open_clip
from vlmfast.models.loading.open_clip_layers import StateDict

if TYPE_CHECKING:
    from vlmfast.models.pair import HookedPair


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


__all__ = [
    "LazyTokenizer",
    "StateDict",
    "convert_open_clip",
    "default_preprocess",
    "from_open_clip",
    "load_open_clip",
]
