"""The shared base of every causal tool: pairs, metrics, eval sets, units, the patch rule.

- ``backend``: the few calls into the hooked pair (inputs, towers, cached runs, patches).
- ``conventions``: recovery, eval mode, paired inputs, direction (``DIRECTIONS``, ``TOWERS``).
- ``components``: what a patch sweep patches (``ComponentSpec``, ``component_spec``).
- ``metrics``: ``MatchedScore``, ``LogitDiff``, ``Alignment``, ``resolve_metric``, ``similarity``.
- ``inputs``: ``prepare_inputs`` (clean / corrupted inputs as base and source).
- ``corruption``: ``CORRUPTIONS``, ``corrupt_inputs`` (counterfactual records).
- ``evalset``: ``EvalSet``, ``concept_metrics``, ``METRICS``.
- ``units``, ``activations``, ``unit_ranking``: ``Unit``, ``UnitSet``, ``UnitLayout``,
  ``UNIT_KINDS``, ``unit_activations``, ``load_scores``, ``top_units``, ``random_like``.
- ``limits``: ``DEFAULT_MAX_ROWS``, ``INTERVENTION_MAX_ROWS``; ``jsonsafe``: ``json_safe``.

Names are imported on first use (PEP 562): the CLI reads ``CORRUPTIONS`` while building
its parser, before torch is imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vlmfast.lazy_exports import lazy_exports

_NAMES: dict[str, str] = {
    "CORRUPTIONS": "corruption",
    "corrupt_inputs": "corruption",
    "DIRECTIONS": "conventions",
    "RECOVERY_TOL": "conventions",
    "TOWERS": "conventions",
    "recovery": "conventions",
    "ComponentSpec": "components",
    "component_spec": "components",
    "Alignment": "metrics",
    "LogitDiff": "metrics",
    "MatchedScore": "metrics",
    "Metric": "metrics",
    "metric_space": "metrics",
    "resolve_metric": "metrics",
    "similarity": "metrics",
    "prepare_inputs": "inputs",
    "EvalSet": "evalset",
    "METRICS": "evalset",
    "concept_metrics": "evalset",
    "UNIT_KINDS": "units",
    "Unit": "units",
    "UnitLayout": "units",
    "UnitSet": "units",
    "random_like": "units",
    "UnitActivations": "activations",
    "unit_activations": "activations",
    "SavedScores": "unit_ranking",
    "load_scores": "unit_ranking",
    "top_units": "unit_ranking",
    "DEFAULT_MAX_ROWS": "limits",
    "INTERVENTION_MAX_ROWS": "limits",
    "json_safe": "jsonsafe",
}

__all__ = [
    "CORRUPTIONS",
    "DEFAULT_MAX_ROWS",
    "DIRECTIONS",
    "INTERVENTION_MAX_ROWS",
    "METRICS",
    "RECOVERY_TOL",
    "TOWERS",
    "UNIT_KINDS",
    "Alignment",
    "ComponentSpec",
    "EvalSet",
    "LogitDiff",
    "MatchedScore",
    "Metric",
    "SavedScores",
    "Unit",
    "UnitActivations",
    "UnitLayout",
    "UnitSet",
    "component_spec",
    "concept_metrics",
    "corrupt_inputs",
    "json_safe",
    "load_scores",
    "metric_space",
    "prepare_inputs",
    "random_like",
    "recovery",
    "resolve_metric",
    "similarity",
    "top_units",
    "unit_activations",
]

if TYPE_CHECKING:
    from vlmfast.causal.core.activations import UnitActivations, unit_activations
    from vlmfast.causal.core.components import ComponentSpec, component_spec
    from vlmfast.causal.core.conventions import DIRECTIONS, RECOVERY_TOL, TOWERS, recovery
    from vlmfast.causal.core.corruption import CORRUPTIONS, corrupt_inputs
    from vlmfast.causal.core.evalset import METRICS, EvalSet, concept_metrics
    from vlmfast.causal.core.inputs import prepare_inputs
    from vlmfast.causal.core.jsonsafe import json_safe
    from vlmfast.causal.core.limits import DEFAULT_MAX_ROWS, INTERVENTION_MAX_ROWS
    from vlmfast.causal.core.metrics import (
        Alignment,
        LogitDiff,
        MatchedScore,
        Metric,
        metric_space,
        resolve_metric,
        similarity,
    )
    from vlmfast.causal.core.unit_ranking import SavedScores, load_scores, top_units
    from vlmfast.causal.core.units import UNIT_KINDS, Unit, UnitLayout, UnitSet, random_like


__getattr__, __dir__ = lazy_exports(__name__, _NAMES, __all__)
