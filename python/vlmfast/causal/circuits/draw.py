"""A found circuit drawn to files: its edges, ``<base>.dot`` and ``<base>.svg``.

``vlmfast circuit`` and the pipeline's ``circuit`` stage both draw through
:func:`draw_circuit`, so the two front doors write the same drawing.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vlmfast.causal.circuits.dot import circuit_to_dot
from vlmfast.causal.circuits.graph import circuit_edges
from vlmfast.causal.circuits.meeting import meeting_point, route_through_embeddings
from vlmfast.causal.circuits.result import Circuit
from vlmfast.causal.circuits.svg import circuit_to_svg
from vlmfast.causal.circuits.types import CircuitEdge
from vlmfast.causal.core.limits import DEFAULT_MAX_ROWS
from vlmfast.causal.core.metrics import Metric


def draw_circuit(
    circuit: Circuit,
    pair: Any,
    inputs: Mapping[str, Any],
    base: str | Path,
    *,
    limit: int = 0,
    title: str | None = None,
    metric: str | Metric = "score",
    max_rows: int = DEFAULT_MAX_ROWS,
    meeting: bool = True,
) -> tuple[list[CircuitEdge], list[Path]]:
    """Edges among the circuit's ``limit`` highest-ranked nodes (0: all) and into the logit,
    drawn to ``base.dot`` and ``base.svg`` (nodes labelled by rank).

    ``inputs``: ``{images, texts, corrupt_images, corrupt_texts}`` (what
    ``vf.causal.core.corrupt_inputs`` returns). With every node drawn the edges are kept on
    the circuit (``circuit.to_json()`` then holds them). With ``meeting`` (default) the
    edges into the logit run through each tower's projection into the shared space
    (``meeting.py``: ``u -> image.embed -> logit``; both towers' projections are drawn
    when the circuit's candidates span both), annotated with their exact effects, the
    total and the towers' interaction; ``circuit.meta["meeting"]`` keeps those numbers.
    Returns ``(edges as drawn, [dot, svg])``; ``([], [])`` for an empty circuit.
    """
    nodes = list(circuit.nodes[:limit] if limit else circuit.nodes)
    if not nodes:
        return [], []
    args = (inputs["images"], inputs["texts"])
    corrupt = (inputs.get("corrupt_images"), inputs.get("corrupt_texts"))
    if len(nodes) == len(circuit.nodes):
        edges = circuit.edges(pair, *args, *corrupt, metric=metric, max_rows=max_rows)
    else:
        edges = circuit_edges(pair, *args, *corrupt, nodes=nodes, metric=metric, max_rows=max_rows)
    labels = {n.key: f"rank {r}" for r, n in enumerate(nodes)}
    if meeting:
        meet = meeting_point(pair, *args, *corrupt, metric=metric)
        edges = route_through_embeddings(edges, meet, circuit.meta.get("towers", ()))
        labels.update(meet.labels())
        circuit.meta["meeting"] = meet.to_dict()
    base = Path(base)
    dot, svg = base.with_suffix(".dot"), base.with_suffix(".svg")
    dot.write_text(circuit_to_dot(nodes, edges, labels=labels))
    svg.write_text(circuit_to_svg(nodes, edges, labels, title=title))
    return edges, [dot, svg]


__all__ = ["draw_circuit"]
