"""``load_pair(spec)``: one entry point for every model source.

- ``open_clip:<arch>`` (``pretrained``: ``None`` random init, a tag, or a checkpoint path)
- ``hf:<hub id or local dir>`` (``vlmfast.models.loading.hf``)
- ``synthetic:tiny`` (the bundled model, ``vlmfast.data.synthetic.bundled``)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

import torch

from vlmfast.errors import ModelLoadError

if TYPE_CHECKING:
    from vlmfast.models.pair import HookedPair

#: open_clip architectures covered by the parity tests (any open_clip ViT config loads).
OPEN_CLIP_TESTED = (
    "ViT-B-32",
    "ViT-B-32-quickgelu",
    "ViT-B-16",
    "ViT-L-14",
    "ViT-SO400M-14-SigLIP-384",
)

SCHEMES = ("open_clip", "hf", "synthetic")


def _import_loader(module: str, spec: str) -> object:
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name is not None and module.startswith(err.name):
            raise ModelLoadError(
                f"cannot load {spec!r}: the loader module {module} is not part of this build"
            ) from err
        raise


def load_pair(
    spec: str,
    pretrained: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> HookedPair:
    """Returns a CLIP/SigLIP model loaded as a ``HookedPair``, in eval mode.

    ``spec``: ``open_clip:<arch>``, ``hf:<hub id or local dir>`` or ``synthetic:tiny``.
    ``pretrained`` (open_clip only): ``None`` for random weights, an open_clip tag such as
    ``"openai"`` (downloaded or read from the cache as open_clip does), or the path of a
    local checkpoint file. The pair is returned in eval mode (``pair.training`` False),
    which the causal tools require.

    Raises:
        ModelLoadError: a malformed or unknown ``spec``, a missing optional dependency,
            weights that cannot be read, or an architecture vlmfast cannot represent.
    """
    return _load_pair(spec, pretrained, device, dtype).eval()


def _load_pair(
    spec: str, pretrained: str | None, device: str | torch.device, dtype: torch.dtype
) -> HookedPair:
    if not isinstance(spec, str) or ":" not in spec:
        raise ModelLoadError(
            f"model spec must look like 'open_clip:ViT-B-32', 'hf:<id or dir>' or "
            f"'synthetic:tiny', got {spec!r}"
        )
    scheme, _, rest = spec.partition(":")
    if not rest:
        raise ModelLoadError(f"model spec {spec!r} names no model after {scheme!r}")
    if scheme == "open_clip":
        from vlmfast.models.loading.open_clip import load_open_clip

        return load_open_clip(rest, pretrained, device=device, dtype=dtype)
    if scheme == "hf":
        mod = _import_loader("vlmfast.models.loading.hf", spec)
        load_hf = getattr(mod, "load_hf", None)
        if load_hf is None:
            raise ModelLoadError(f"cannot load {spec!r}: vlmfast.models.loading.hf has no load_hf")
        pair: HookedPair = load_hf(rest, pretrained=pretrained, device=device, dtype=dtype)
        return pair
    if scheme == "synthetic":
        mod = _import_loader("vlmfast.data.synthetic.bundled", spec)
        loader = getattr(mod, "load_pair", None)
        if loader is None:
            raise ModelLoadError(
                f"cannot load {spec!r}: vlmfast.data.synthetic.bundled has no load_pair"
            )
        pair = loader(rest, device=device, dtype=dtype)
        return pair
    raise ModelLoadError(
        f"unknown model source {scheme!r} in {spec!r}; known: {', '.join(SCHEMES)}"
    )


_UNSUPPORTED_VISION_KEYS = (
    "attentional_pool",
    "qk_norm",
    "scaled_cosine_attn",
    "scale_heads",
    "scale_attn_inner",
    "scale_attn",
    "scale_fc",
    "block_type",
)


# timm ViT variants that are not plain timm VisionTransformers (Eva/PE RoPE, hybrid
# conv stems, relative positions)
_UNSUPPORTED_TIMM = ("pe_core", "_mci", "relpos", "eva")


def _open_clip_arch_supported(cfg: dict[str, object]) -> bool:
    vision = cfg.get("vision_cfg")
    text = cfg.get("text_cfg")
    if not isinstance(vision, dict) or not isinstance(text, dict) or "multimodal_cfg" in cfg:
        return False
    if not isinstance(vision.get("layers", 12), int):
        return False  # ResNet image towers
    timm_name = vision.get("timm_model_name")
    if timm_name is not None and not (
        str(timm_name).startswith("vit_")
        and not any(bad in str(timm_name) for bad in _UNSUPPORTED_TIMM)
        and vision.get("timm_proj") in ("none", "linear", None)
    ):
        return False
    if text.get("hf_model_name") or text.get("embed_cls"):
        return False
    return not any(vision.get(k) or text.get(k) for k in _UNSUPPORTED_VISION_KEYS)


def supported_open_clip_archs() -> list[str]:
    """Returns the open_clip architecture names whose config vlmfast's hooked towers can represent.

    Judged from the config (a ViT image tower, open_clip text transformer, no layer scale
    or custom attention); ``OPEN_CLIP_TESTED`` are the ones with parity tests.
    """
    import open_clip

    out = []
    for name in open_clip.list_models():
        cfg = open_clip.get_model_config(name)
        if cfg is not None and _open_clip_arch_supported(cfg):
            out.append(name)
    return out
