"""What attribution scores and how its inputs are checked (shared by ``attribute`` and
``exact_effects``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from vlmfast.causal.core.conventions import (
    DIRECTIONS,
    TOWERS,
    check_choice,
    check_eval_mode,
    check_tower,
)
from vlmfast.causal.core.inputs import prepare_inputs
from vlmfast.errors import InputError

ATTRIBUTION_KINDS = ("resid", "heads", "neurons")
"""Component kinds attribution scores (``capture.KIND_POINT`` maps each to its hook)."""
METHODS = ("atp", "atp*", "ig")
DEFAULT_STEPS = 16

__all__ = [
    "ATTRIBUTION_KINDS",
    "DEFAULT_STEPS",
    "DIRECTIONS",
    "METHODS",
    "attribution_inputs",
]


def attribution_inputs(
    pair: Any,
    images: Any,
    texts: Any,
    corrupt_images: Any,
    corrupt_texts: Any,
    components: Sequence[str],
    towers: Sequence[str],
    direction: str,
) -> tuple[dict[str, tuple[Tensor, Tensor]], dict[str, bool], list[str], list[str]]:
    """Checked ``({tower: (base, source)}, {tower: changed}, kinds, towers)``."""
    check_eval_mode(pair, "vf.causal.attribute")
    kinds = _check_seq(components, ATTRIBUTION_KINDS, "components")
    tower_list = [check_tower(t, "towers") for t in _check_seq(towers, TOWERS, "towers")]
    check_choice(direction, DIRECTIONS, "direction")
    inputs, changed = prepare_inputs(
        pair, images, texts, corrupt_images, corrupt_texts, direction=direction
    )
    return inputs, changed, kinds, tower_list


def _check_seq(values: Sequence[str], allowed: Sequence[str], what: str) -> list[str]:
    if isinstance(values, str):
        values = [values]
    out = list(dict.fromkeys(values))
    if not out:
        raise InputError(f"{what} is empty; expected some of {list(allowed)}")
    for v in out:
        check_choice(v, allowed, what)
    return out
