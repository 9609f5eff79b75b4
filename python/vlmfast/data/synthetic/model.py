"""The bundled tiny CLIP: its open_clip-style config, construction and preprocessing.

The model is open_clip's own ``CLIP`` class built from an open_clip-style config
dict (``embed_dim``, ``vision_cfg``, ``text_cfg``), so any open_clip loader,
including vlmfast's, reads it like a released open_clip checkpoint. The ViT's
16-pixel patches coincide with the benchmark's 4x4 grid cells: each object lies
inside one patch token, which keeps circuits easy to read.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from vlmfast.data.synthetic import spec
from vlmfast.data.synthetic.tokenizer import vocabulary

if TYPE_CHECKING:
    import torch
    from PIL import Image

IMAGE_MEAN = (0.5, 0.5, 0.5)
IMAGE_STD = (0.5, 0.5, 0.5)

TINY_CONFIG: dict[str, Any] = {
    "embed_dim": 64,
    "quick_gelu": False,
    "vision_cfg": {
        "image_size": spec.IMAGE_SIZE,
        "patch_size": spec.CELL,
        "width": 128,
        "layers": 4,
        "head_width": 32,
        "mlp_ratio": 4.0,
    },
    "text_cfg": {
        "context_length": 18,
        "vocab_size": len(vocabulary()),
        "width": 128,
        "heads": 4,
        "layers": 3,
        "mlp_ratio": 4.0,
    },
}
"""open_clip-style config of the bundled model (``open_clip.CLIP(**config)``)."""


def tiny_config() -> dict[str, Any]:
    """A fresh copy of ``TINY_CONFIG``."""
    return copy.deepcopy(TINY_CONFIG)


def build_clip(config: dict[str, Any] | None = None) -> torch.nn.Module:
    """open_clip's ``CLIP`` built from an open_clip-style config dict."""
    from open_clip.model import CLIP

    cfg = copy.deepcopy(config if config is not None else TINY_CONFIG)
    return CLIP(
        embed_dim=cfg["embed_dim"],
        vision_cfg=cfg["vision_cfg"],
        text_cfg=cfg["text_cfg"],
        quick_gelu=cfg.get("quick_gelu", False),
    )


def pixels_from_uint8(images: np.ndarray) -> torch.Tensor:
    """Rendered uint8 images [B, H, W, 3] -> normalised float tensor [B, 3, H, W]."""
    import torch

    x = torch.from_numpy(np.array(images, dtype=np.uint8)).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGE_STD).view(1, 3, 1, 1)
    return (x - mean) / std


class SyntheticPreprocess:
    """Callable ``PIL.Image -> Tensor[3, S, S]`` like open_clip's preprocess transform:
    RGB, bicubic resize to the model's image size (if needed), normalise."""

    def __init__(self, image_size: int = spec.IMAGE_SIZE) -> None:
        self.image_size = image_size

    def __call__(self, image: Image.Image) -> torch.Tensor:
        from PIL import Image as PILImage

        img = image.convert("RGB")
        if img.size != (self.image_size, self.image_size):
            img = img.resize((self.image_size, self.image_size), PILImage.Resampling.BICUBIC)
        return pixels_from_uint8(np.asarray(img)[None])[0]

    def batch(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Many images -> [B, 3, S, S]."""
        import torch

        return torch.stack([self(im) for im in images])
