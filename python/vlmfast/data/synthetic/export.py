"""Writes benchmark samples to disk as a folder pair source (PNG files + captions.jsonl)."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from vlmfast.data.synthetic.dataset import make_sample


def export_folder(
    out: str | Path,
    *,
    n: int,
    seed: int = 0,
    split: str = "test",
    noise_std: float = 0.0,
    texture: bool = False,
) -> Path:
    """Writes ``images/{i:06d}.png`` and ``captions.jsonl`` (``{"image", "caption", "meta"}``
    per line; ``meta`` is the exact ground truth). ``open_source(out)`` reads it back."""
    root = Path(out)
    (root / "images").mkdir(parents=True, exist_ok=True)
    with open(root / "captions.jsonl", "w", encoding="utf-8") as fh:
        for i in range(n):
            s = make_sample(seed, split, i)
            name = f"images/{i:06d}.png"
            Image.fromarray(s.image(texture=texture, noise_std=noise_std)).save(root / name)
            fh.write(
                json.dumps({"image": name, "caption": s.caption.text, "meta": s.meta()}) + "\n"
            )
    return root
