"""Clean and corrupted inputs of a causal tool, loaded and paired once.

Every gradient or patching tool (attribution, exact effects, circuit edges, feature
circuits) starts from the same step: preprocess the clean images / texts and their
corrupted counterparts, check that they are paired (same shapes), and orient them by the
direction (``vlmfast.causal.core.conventions``): *base* is the run a patch goes into,
*source* the run its values come from.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from vlmfast.causal.core import backend
from vlmfast.causal.core.conventions import (
    DIRECTIONS,
    TOWERS,
    check_choice,
    check_eval_mode,
    check_paired,
)
from vlmfast.errors import InputError

BaseSource = dict[str, tuple[Tensor, Tensor]]
"""``{tower: (base inputs, source inputs)}``."""


def prepare_inputs(
    pair: Any,
    images: Any,
    texts: Any,
    corrupt_images: Any = None,
    corrupt_texts: Any = None,
    *,
    direction: str = "denoising",
    what: str = "vf.causal.attribute",
) -> tuple[BaseSource, dict[str, bool]]:
    """Checked ``({tower: (base, source)}, {tower: changed})``.

    A tower without corrupted inputs keeps its clean inputs on both sides (``changed``
    False). ``what`` names the calling tool in the eval-mode error.
    """
    check_eval_mode(pair, what)
    check_choice(direction, DIRECTIONS, "direction")
    clean = backend.as_inputs(pair, images, texts)
    if corrupt_images is None and corrupt_texts is None:
        raise InputError("attribute needs corrupt_images=, corrupt_texts= or both")
    corrupt_in = backend.as_inputs(pair, corrupt_images, corrupt_texts, need_both=False)
    corrupt = (
        clean[0] if corrupt_in[0] is None else corrupt_in[0],
        clean[1] if corrupt_in[1] is None else corrupt_in[1],
    )
    check_paired(clean[0], corrupt[0], "images")
    check_paired(clean[1], corrupt[1], "texts")
    base, source = (corrupt, clean) if direction == "denoising" else (clean, corrupt)
    inputs = {"image": (base[0], source[0]), "text": (base[1], source[1])}
    changed = {t: not torch.equal(inputs[t][0], inputs[t][1]) for t in TOWERS}
    return inputs, changed


__all__ = ["BaseSource", "prepare_inputs"]
