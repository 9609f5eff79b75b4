"""Causal tools on the hooked pair: patching, tracing, attribution, direct effects, circuits.

    import vlmfast as vf
    grid = vf.causal.patch_heads(pair, px, tok, source={"images": px_src}, metric="score")
    # grid[L, h]: matched score (scale*cos + bias) with head h of image layer L patched

Layout, by method (each sub-package's ``__init__`` names its public API; arrows point
down only): ``core`` (pairs, metrics, conventions, inputs and corruptions, eval sets,
units, limits) under ``patching`` (batched patch sweeps), ``tracing`` (ROME's
corrupt-then-restore), ``attribution`` (AtP, AtP*, IG, the exact reference), ``direct``
(direct effects, the decomposition, the ablation ladder), ``circuits`` (search, the
ablation engine, edges, feature circuits, drawings) and ``interventions`` (concept
ablation and steering). Every name below is importable from ``vlmfast.causal``; they are
loaded on first use (PEP 562), so ``vlmfast.causal.core`` stays cheap for the CLI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vlmfast.lazy_exports import lazy_exports

# public name -> sub-package module that defines it
_NAMES: dict[str, str] = {
    "AblationLadder": "direct",
    "Alignment": "core.metrics",
    "AttributionConfig": "attribution",
    "AttributionResult": "attribution",
    "Circuit": "circuits",
    "CircuitConfig": "circuits",
    "CircuitEdge": "circuits",
    "CircuitNode": "circuits",
    "ComponentSpec": "core.components",
    "DirectEffects": "direct",
    "DirectEffectsBoth": "direct",
    "EvalSet": "core.evalset",
    "FeatureCircuit": "circuits",
    "InterventionConfig": "interventions",
    "InterventionResult": "interventions",
    "LadderRung": "direct",
    "LogitDiff": "core.metrics",
    "MatchedScore": "core.metrics",
    "SteeringSweep": "interventions",
    "TraceConfig": "tracing",
    "TraceResult": "tracing",
    "Unit": "core.units",
    "UnitLayout": "core.units",
    "UnitSet": "core.units",
    "ablation_ladder": "direct",
    "attribute": "attribution",
    "circuit_edges": "circuits",
    "circuit_to_dot": "circuits",
    "circuit_to_svg": "circuits",
    "component_spec": "core.components",
    "concept_intervention": "interventions",
    "direct_effects": "direct",
    "exact_effects": "attribution",
    "feature_attribution": "circuits",
    "feature_families": "circuits",
    "find_circuit": "circuits",
    "find_feature_circuit": "circuits",
    "load_scores": "core.unit_ranking",
    "patch_heads": "patching",
    "patch_sweep": "patching",
    "PatchConfig": "patching",
    "resolve_metric": "core.metrics",
    "similarity": "core.metrics",
    "steering_sweep": "interventions",
    "top_units": "core.unit_ranking",
    "trace": "tracing",
    "unit_activations": "core.activations",
}
_SUBPACKAGES = ("attribution", "circuits", "core", "direct", "interventions", "patching", "tracing")

__all__ = [
    "AblationLadder",
    "Alignment",
    "AttributionConfig",
    "AttributionResult",
    "Circuit",
    "CircuitConfig",
    "CircuitEdge",
    "CircuitNode",
    "ComponentSpec",
    "DirectEffects",
    "DirectEffectsBoth",
    "EvalSet",
    "FeatureCircuit",
    "InterventionConfig",
    "InterventionResult",
    "LadderRung",
    "LogitDiff",
    "MatchedScore",
    "PatchConfig",
    "SteeringSweep",
    "TraceConfig",
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

if TYPE_CHECKING:
    from vlmfast.causal.attribution import (
        AttributionConfig,
        AttributionResult,
        attribute,
        exact_effects,
    )
    from vlmfast.causal.circuits import (
        Circuit,
        CircuitConfig,
        CircuitEdge,
        CircuitNode,
        FeatureCircuit,
        circuit_edges,
        circuit_to_dot,
        circuit_to_svg,
        feature_attribution,
        feature_families,
        find_circuit,
        find_feature_circuit,
    )
    from vlmfast.causal.core.activations import unit_activations
    from vlmfast.causal.core.components import ComponentSpec, component_spec
    from vlmfast.causal.core.evalset import EvalSet
    from vlmfast.causal.core.metrics import (
        Alignment,
        LogitDiff,
        MatchedScore,
        resolve_metric,
        similarity,
    )
    from vlmfast.causal.core.unit_ranking import load_scores, top_units
    from vlmfast.causal.core.units import Unit, UnitLayout, UnitSet
    from vlmfast.causal.direct import (
        AblationLadder,
        DirectEffects,
        DirectEffectsBoth,
        LadderRung,
        ablation_ladder,
        direct_effects,
    )
    from vlmfast.causal.interventions import (
        InterventionConfig,
        InterventionResult,
        SteeringSweep,
        concept_intervention,
        steering_sweep,
    )
    from vlmfast.causal.patching import PatchConfig, patch_heads, patch_sweep
    from vlmfast.causal.tracing import TraceConfig, TraceResult, trace


__getattr__, __dir__ = lazy_exports(__name__, _NAMES, __all__, submodules=_SUBPACKAGES)
