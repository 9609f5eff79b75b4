"""Causal tools on the hooked pair: activation patching sweeps and their metrics.

import vlmfast as vf
grid = vf.causal.patch_heads(pair, px, tok, source={"images": px_src}, metric="score")
# grid[L, h]: matched score (scale*cos + bias) with head h of image layer L patched
"""

from __future__ import annotations

from vlmfast.causal.attribution import attribute, exact_effects
from vlmfast.causal.attribution_result import AttributionResult
from vlmfast.causal.circuit import find_circuit
from vlmfast.causal.circuit_dot import circuit_to_dot
from vlmfast.causal.circuit_graph import circuit_edges
from vlmfast.causal.circuit_result import Circuit
from vlmfast.causal.circuit_svg import circuit_to_svg
from vlmfast.causal.circuit_types import CircuitEdge, CircuitNode
from vlmfast.causal.components import ComponentSpec, component_spec
from vlmfast.causal.concept_intervention import (
    InterventionResult,
    SteeringSweep,
    concept_intervention,
    steering_sweep,
)
from vlmfast.causal.direct_effects import DirectEffects, DirectEffectsBoth, direct_effects
from vlmfast.causal.evalset import EvalSet
from vlmfast.causal.feature_circuit import (
    FeatureCircuit,
    feature_attribution,
    feature_families,
    find_feature_circuit,
)
from vlmfast.causal.ladder import AblationLadder, LadderRung, ablation_ladder
from vlmfast.causal.metrics import Alignment, LogitDiff, MatchedScore, resolve_metric, similarity
from vlmfast.causal.patching import patch_heads, patch_sweep
from vlmfast.causal.tracing import TraceResult, trace
from vlmfast.causal.units import (
    Unit,
    UnitLayout,
    UnitSet,
    load_scores,
    top_units,
    unit_activations,
)

__all__ = [
    "AblationLadder",
    "Alignment",
    "AttributionResult",
    "Circuit",
    "CircuitEdge",
    "CircuitNode",
    "ComponentSpec",
    "DirectEffects",
    "DirectEffectsBoth",
    "EvalSet",
    "FeatureCircuit",
    "InterventionResult",
    "LadderRung",
    "LogitDiff",
    "MatchedScore",
    "SteeringSweep",
    "TraceResult",
    "Unit",
    "UnitLayout",
    "UnitSet",
    "ablation_ladder",
    "attribute",
    "circuit_edges",
    "circuit_to_dot",
    "circuit_to_svg",
    "component_spec",
    "concept_intervention",
    "direct_effects",
    "exact_effects",
    "feature_attribution",
    "feature_families",
    "find_circuit",
    "find_feature_circuit",
    "load_scores",
    "patch_heads",
    "patch_sweep",
    "resolve_metric",
    "similarity",
    "steering_sweep",
    "top_units",
    "trace",
    "unit_activations",
]
