"""Circuits: the smallest set of components that keeps the pair's score, and its drawing.

Public API: ``find_circuit`` with ``CircuitConfig`` (``search.py``, ``config.py``)
returning a ``Circuit`` (``result.py``) of ``CircuitNode`` (``types.py``);
``circuit_edges`` (``graph.py``) returning ``CircuitEdge``; SAE feature circuits,
``find_feature_circuit`` / ``FeatureCircuit`` (``feature_circuit.py``) with
``feature_attribution`` / ``feature_families`` (``features.py``); drawings,
``circuit_to_dot`` (``dot.py``), ``circuit_to_svg`` (``svg.py``) and ``draw_circuit``
(``draw.py``); where the two towers meet, ``meeting_point`` / ``Meeting`` and
``route_through_embeddings`` (``meeting.py``: edges through each tower's projection). The batched ablation engine (``engine.py``, ``ablated_block.py``) takes
component families (``families.py``: ``HeadFamily``, ``NeuronFamily``, the protocol).
"""

from __future__ import annotations

from vlmfast.causal.circuits.config import CircuitConfig
from vlmfast.causal.circuits.dot import circuit_to_dot
from vlmfast.causal.circuits.draw import draw_circuit
from vlmfast.causal.circuits.engine import CircuitEvaluator
from vlmfast.causal.circuits.families import ComponentFamily, HeadFamily, NeuronFamily
from vlmfast.causal.circuits.feature_circuit import FeatureCircuit, find_feature_circuit
from vlmfast.causal.circuits.features import feature_attribution, feature_families
from vlmfast.causal.circuits.graph import circuit_edges
from vlmfast.causal.circuits.meeting import Meeting, meeting_point, route_through_embeddings
from vlmfast.causal.circuits.result import Circuit, NullSummary
from vlmfast.causal.circuits.search import find_circuit
from vlmfast.causal.circuits.svg import circuit_to_svg
from vlmfast.causal.circuits.types import EMBED, LOGIT, CircuitEdge, CircuitNode

__all__ = [
    "EMBED",
    "LOGIT",
    "Circuit",
    "CircuitConfig",
    "CircuitEdge",
    "CircuitEvaluator",
    "CircuitNode",
    "ComponentFamily",
    "FeatureCircuit",
    "HeadFamily",
    "Meeting",
    "NeuronFamily",
    "NullSummary",
    "circuit_edges",
    "circuit_to_dot",
    "circuit_to_svg",
    "draw_circuit",
    "feature_attribution",
    "feature_families",
    "find_circuit",
    "find_feature_circuit",
    "meeting_point",
    "route_through_embeddings",
]
