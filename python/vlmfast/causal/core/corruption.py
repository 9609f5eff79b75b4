"""Counterfactual inputs of image-caption records: the corruption of a causal run.

The ``vlmfast attribute`` command and the pipeline's ``attribute`` stage build their
corrupted batch here, so the two front doors corrupt the same way.

``image-shift``   each image replaced by the previous record's (the batch rolled by one)
``image-noise``   Gaussian pixel noise of std ``noise_std`` (seeded)
``text-shift``    each caption replaced by the previous record's
``text-negative`` the record's first hard negative caption (synthetic data's meta)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vlmfast.errors import InputError

CORRUPTIONS = ("image-shift", "image-noise", "text-shift", "text-negative")


def corrupt_inputs(
    pair: Any, records: Sequence[Any], corrupt: str, *, seed: int = 0, noise_std: float = 1.0
) -> dict[str, Any]:
    """Clean pixels / tokens of ``records`` and their ``corrupt`` counterpart (one of
    :data:`CORRUPTIONS`): ``{images, texts, corrupt_images, corrupt_texts}``."""
    import torch  # here: the CLI imports this module while building its parser

    px = pair.preprocess([r.image for r in records])
    captions = [r.caption for r in records]
    tok = pair.tokenize(captions)
    out: dict[str, Any] = {"images": px, "texts": tok, "corrupt_images": None}
    out["corrupt_texts"] = None
    if corrupt == "image-shift":
        out["corrupt_images"] = px.roll(1, 0)
    elif corrupt == "image-noise":
        gen = torch.Generator().manual_seed(seed)
        noise = torch.randn(px.shape, generator=gen).to(device=px.device, dtype=px.dtype)
        out["corrupt_images"] = px + noise_std * noise
    elif corrupt == "text-shift":
        out["corrupt_texts"] = tok.roll(1, 0)
    elif corrupt == "text-negative":
        out["corrupt_texts"] = pair.tokenize(_negatives(records))
    else:
        raise InputError(f"corrupt must be one of {list(CORRUPTIONS)}, got {corrupt!r}")
    return out


def _negatives(records: Sequence[Any]) -> list[str]:
    negatives = []
    for r in records:
        neg = r.meta.get("negatives") or {}
        if not neg:
            raise InputError(
                f"--corrupt text-negative needs hard negatives in the records' meta "
                f"(synthetic data); record {r.sample_id} has none"
            )
        negatives.append(neg[sorted(neg)[0]])
    return negatives


__all__ = ["CORRUPTIONS", "corrupt_inputs"]
