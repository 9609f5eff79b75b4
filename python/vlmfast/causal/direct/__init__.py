"""Direct effects: each head's and MLP's direct contribution to the logit, and the ladder.

Public API: ``direct_effects`` (``effects.py``) returning ``DirectEffects`` /
``DirectEffectsBoth`` (``result.py``); ``ablation_ladder`` (``ladder.py``) returning an
``AblationLadder`` of ``LadderRung`` (``ladder_result.py``); the exact decomposition of a
tower's embedding into parts, ``tower_parts`` / ``reference_parts`` / ``TowerParts``
(``decompose.py``). ``plots.py`` draws both results.
"""

from __future__ import annotations

from vlmfast.causal.direct.decompose import TowerParts, reference_parts, tower_parts
from vlmfast.causal.direct.effects import direct_effects
from vlmfast.causal.direct.ladder import ablation_ladder
from vlmfast.causal.direct.ladder_result import AblationLadder, LadderRung
from vlmfast.causal.direct.result import DirectEffects, DirectEffectsBoth, DirectEffectsNull

__all__ = [
    "AblationLadder",
    "DirectEffects",
    "DirectEffectsBoth",
    "DirectEffectsNull",
    "LadderRung",
    "TowerParts",
    "ablation_ladder",
    "direct_effects",
    "reference_parts",
    "tower_parts",
]
