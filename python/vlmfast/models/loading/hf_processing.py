"""Tokenizer and image preprocessing for ``hf:`` models, read from the local directory only.

The tokenizer is built on first use from the directory's tokenizer files
(``AutoTokenizer``); when there are none, ``tokenize`` raises a ModelLoadError that
says which files are missing, and the model still runs on token ids you supply.
Preprocessing uses the directory's ``preprocessor_config.json`` (``AutoImageProcessor``)
and otherwise falls back to the config's image size with the family's resize rule and
mean/std (CLIP: shortest edge + center crop, OpenAI mean/std; SigLIP: square resize,
mean = std = 0.5).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from vlmfast.errors import InputError, ModelLoadError

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)

_TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "spiece.model", "tokenizer.model")


class HFTokenizer:
    """``list[str] -> LongTensor[B, context_length]``, padded to the model's context length."""

    def __init__(self, model_dir: Path, family: str, context_length: int) -> None:
        self.model_dir = model_dir
        self.family = family
        self.context_length = context_length
        self._tok: Any = None

    def _load(self) -> Any:
        if self._tok is not None:
            return self._tok
        if not any((self.model_dir / f).is_file() for f in _TOKENIZER_FILES):
            raise ModelLoadError(
                f"hf model directory {str(self.model_dir)!r} has no tokenizer files "
                f"(looked for {', '.join(_TOKENIZER_FILES)}); save the processor next to the "
                "model (`AutoProcessor.from_pretrained(id).save_pretrained(dir)`) or pass token "
                "ids to pair.run / pair.logits directly"
            )
        from transformers import AutoTokenizer

        try:
            self._tok = AutoTokenizer.from_pretrained(str(self.model_dir), local_files_only=True)
        except Exception as err:
            raise ModelLoadError(
                f"cannot build the tokenizer from {str(self.model_dir)!r}: {err}"
            ) from err
        return self._tok

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise InputError("tokenize expects a list of strings")
        tok = self._load()
        enc = tok(
            list(texts),
            padding="max_length",
            max_length=self.context_length,
            truncation=True,
            return_tensors="pt",
        )
        ids: torch.Tensor = enc["input_ids"].long()
        return ids


class HFPreprocess:
    """``PIL.Image -> Tensor[3, image_size, image_size]`` (float32); the pair stacks a batch."""

    def __init__(self, model_dir: Path, family: str, image_size: int) -> None:
        self.model_dir = model_dir
        self.family = family
        self.image_size = image_size
        self._proc: Any = None

    def _processor(self) -> Any:
        if self._proc is None:
            self._proc = False
            if (self.model_dir / "preprocessor_config.json").is_file():
                from transformers import AutoImageProcessor

                try:
                    self._proc = AutoImageProcessor.from_pretrained(
                        str(self.model_dir), local_files_only=True
                    )
                except Exception as err:
                    raise ModelLoadError(
                        f"cannot build the image processor from {str(self.model_dir)!r}: {err}"
                    ) from err
        return self._proc

    def __call__(self, image: Any) -> torch.Tensor:
        if not hasattr(image, "convert"):
            raise InputError(f"preprocess expects PIL images, got {type(image).__name__}")
        image = image.convert("RGB")
        proc = self._processor()
        if proc:
            px: torch.Tensor = proc(images=[image], return_tensors="pt")["pixel_values"][0]
            return px.float()
        return fallback_transform(image, self.family, self.image_size)


def fallback_transform(image: Any, family: str, size: int) -> torch.Tensor:
    """The family's standard transform when the directory has no preprocessor config."""
    import numpy as np
    from PIL import Image

    if family == "clip":
        w, h = image.size
        scale = size / min(w, h)
        image = image.resize(
            (max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BICUBIC
        )
        w, h = image.size
        left, top = (w - size) // 2, (h - size) // 2
        image = image.crop((left, top, left + size, top + size))
        mean, std = OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
    else:
        image = image.resize((size, size), Image.Resampling.BICUBIC)
        mean, std = SIGLIP_MEAN, SIGLIP_STD
    arr = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return (arr - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
