"""Concept interventions: ablate or steer a concept's units and measure what moves.

Public API: ``concept_intervention`` with ``InterventionConfig`` (``concept.py``,
``config.py``) returning an ``InterventionResult`` (``result.py``); ``steering_sweep``
returning a ``SteeringSweep`` (``steering.py``). ``edits.py`` turns unit sets into
interventions (ablation masks, SAE feature edits, steering deltas); ``variants.py`` runs
many variants in batched (or serial, the reference) forwards; ``intervene_on_concept``
(``targets.py``) is the one-concept call both front doors make (top units, then the
intervention on the vocabulary of the concept's kind).
"""

from __future__ import annotations

from vlmfast.causal.interventions.concept import concept_intervention
from vlmfast.causal.interventions.config import InterventionConfig
from vlmfast.causal.interventions.result import InterventionResult
from vlmfast.causal.interventions.steering import SteeringSweep, steering_sweep
from vlmfast.causal.interventions.targets import intervene_on_concept

__all__ = [
    "InterventionConfig",
    "InterventionResult",
    "SteeringSweep",
    "concept_intervention",
    "intervene_on_concept",
    "steering_sweep",
]
