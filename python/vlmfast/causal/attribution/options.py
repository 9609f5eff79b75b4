"""What attribution scores and how its inputs are checked (shared by ``attribute`` and
``exact_effects``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
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
from vlmfast.causal.core.limits import DEFAULT_MAX_ROWS
from vlmfast.causal.core.metrics import Metric
from vlmfast.causal.core.options import with_options
from vlmfast.causal.core.vocabulary import ATTRIBUTION_KINDS, ATTRIBUTION_METHODS
from vlmfast.errors import InputError

METHODS = ATTRIBUTION_METHODS
DEFAULT_STEPS = 16


@dataclass(frozen=True)
class AttributionConfig:
    """Everything ``vf.causal.attribute`` can be told, with its defaults.

    ``attribute(pair, px, tok, px_c, config=AttributionConfig(method="ig"))`` and
    ``attribute(pair, px, tok, px_c, method="ig")`` are the same call; keywords given
    with a config replace its fields.
    """

    components: Sequence[str] = ATTRIBUTION_KINDS
    """Kinds among ``"resid"``, ``"heads"``, ``"neurons"``."""
    towers: Sequence[str] = TOWERS
    """``"image"`` and/or ``"text"``."""
    method: str = "atp"
    """``"atp"``, ``"atp*"`` or ``"ig"`` (see ``vlmfast.causal.attribution.attribute``)."""
    metric: str | Metric = "score"
    """``"score"``, ``"logit_diff"``, ``"alignment"`` or a callable on ``[..., n_img,
    n_txt]`` similarities returning one number per leading index."""
    direction: str = "denoising"
    """``"denoising"`` (gradient at corrupt, delta = clean - corrupt) or ``"noising"``."""
    steps: int = DEFAULT_STEPS
    """Interpolation steps of ``"ig"`` (midpoint rule)."""
    null: int = 0
    """K > 0 adds the random-subset false-negative estimate: K components per (tower,
    kind, layer) patched exactly."""
    seed: int = 0
    """Seed of the null's random draw."""
    max_rows: int = DEFAULT_MAX_ROWS
    """The most rows per batched forward (IG steps x batch; null sweeps)."""

    @classmethod
    def build(cls, config: AttributionConfig | None, options: dict[str, Any]) -> AttributionConfig:
        """Returns ``config`` (default: the defaults) with ``options`` replacing its fields.

        Raises:
            TypeError: an option that is not a field.
        """
        return with_options(cls, config, options, "attribute")


__all__ = [
    "ATTRIBUTION_KINDS",
    "DEFAULT_STEPS",
    "DIRECTIONS",
    "METHODS",
    "AttributionConfig",
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
