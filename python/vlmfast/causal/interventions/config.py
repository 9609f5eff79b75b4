"""The options of ``concept_intervention``, one dataclass (the library's config form)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vlmfast.causal.core.limits import INTERVENTION_MAX_ROWS
from vlmfast.causal.core.options import with_options
from vlmfast.models.interventions import Selector


@dataclass(frozen=True)
class InterventionConfig:
    """Everything ``vf.causal.concept_intervention`` can be told, with its defaults.

    ``concept_intervention(pair, units, config)`` and
    ``concept_intervention(pair, units, mode="steer", alpha=4.0)`` are the same call;
    keywords given with a config replace its fields.
    """

    mode: str = "ablate"
    """``"ablate"`` (set the units to their mean / zero) or ``"steer"`` (add ``alpha`` times
    the sum of the units' unit-norm directions at their write hooks: MLP output weight rows
    of neurons at ``mlp_out``, mean head outputs at ``attn_out``, SAE decoder rows at the
    SAE's hook)."""
    ablation: str = "mean"
    """``"mean"`` (over the eval inputs, per position) or ``"zero"``."""
    alpha: float | None = None
    """Steering strength (``mode="steer"`` only, required there)."""
    eval_data: Any = "synthetic:test:256"
    """An ``EvalSet``, a spec (``"synthetic:test:256"``) or a mapping of EvalSet fields."""
    concepts: Sequence[str] | None = None
    """The concept vocabulary reported (default: all of ``eval_data``); zero-shot
    candidates are the concepts of the same kind among them."""
    concept: str | None = None
    """The target concept (default: the one the units were picked for)."""
    null: int = 100
    """Random unit sets of the same size and (hook, kind) mix; 0 for none."""
    seed: int = 0
    """Seed of the random sets."""
    pvalues: bool = True
    """Permutation p-values ``(1 + #null >= observed) / (1 + null)`` (needs ``null >= 20``)."""
    alternative: str = "auto"
    """Which change is extreme: ``"decrease"``, ``"increase"``, ``"two-sided"`` or
    ``"auto"`` (decrease for ablation, the sign of alpha for steering)."""
    primary: str = "margin"
    """The metric of the verdict (default the zero-shot margin)."""
    p_threshold: float = 0.05
    """The p-value below which the target's change beats the null."""
    level: float = 0.95
    """Central interval of the null reported."""
    positions: Selector = None
    """Token positions edited (default all)."""
    saes: Mapping[str, Any] | None = None
    """``{name: TopKSAE}`` for SAE-feature units."""
    max_rows: int = INTERVENTION_MAX_ROWS
    """The most batch rows per forward."""
    method: str = "batched"
    """``"batched"`` or ``"serial"`` (one forward per variant: the reference; ``"loop"``
    is its deprecated old name)."""

    @classmethod
    def build(
        cls, config: InterventionConfig | None, options: Mapping[str, Any]
    ) -> InterventionConfig:
        """Returns ``config`` (default: the defaults) with ``options`` replacing its fields.

        Raises:
            TypeError: an option that is not a field.
        """
        return with_options(cls, config, options, "concept_intervention")


__all__ = ["InterventionConfig"]
