"""The circuit section: per studied concept, sparsity with its null, faithfulness, the
annotated diagram (``vlmfast.causal.circuits.svg``) and its node / edge tables."""

from __future__ import annotations

from typing import Any

from vlmfast.report.fmt import interval, number
from vlmfast.report.model import col, not_run, section, table
from vlmfast.report.paper_claims import claim
from vlmfast.report.run_dir import RunDir
from vlmfast.report.svg import strip_namespace

TITLE = "Circuits"
MAX_EDGES = 40
MAX_DRAWN = 40
"""Nodes drawn per diagram: a larger circuit shows its highest-ranked nodes."""
MAX_LISTED = 60
EDGE_FLOOR = 0.05
"""Edges weaker than this share of the strongest are left out of the drawing (not the table)."""


def _nodes(entry: dict[str, Any], limit: int | None = None) -> list[Any]:
    """The circuit's nodes in ranking order (the first ``limit``)."""
    from vlmfast.causal.circuits.types import CircuitNode

    out = []
    for n in (entry.get("nodes") or [])[:limit]:
        out.append(
            CircuitNode(
                str(n["tower"]), str(n["kind"]), int(n["layer"]), int(n["index"]), n.get("hook")
            )
        )
    return out


def _edges(entry: dict[str, Any], nodes: list[Any]) -> tuple[list[Any], str]:
    """The circuit's edges, or (without them) each node's ranking score as its edge into
    the logit; returns the edges and what they are."""
    from vlmfast.causal.circuits.types import LOGIT, CircuitEdge

    keys = {n.key for n in nodes}
    if entry.get("edges"):
        es = [
            CircuitEdge(str(e["src"]), str(e["dst"]), float(e["effect"]))
            for e in entry["edges"]
            if e["src"] in keys and (e["dst"] in keys or e["dst"] == LOGIT)
        ]
        return es, "edge effects (attribution with the other circuit nodes frozen)"
    order, scores = entry.get("order") or [], entry.get("scores") or []
    score = {k: float(s) for k, s in zip(order, scores, strict=False) if s is not None}
    es = [CircuitEdge(n.key, LOGIT, score.get(n.key, 0.0)) for n in nodes]
    return es, (
        f"edges into the logit carry each node's {entry.get('ranking', 'ranking')} score "
        "(the run computed no node-to-node edges)"
    )


def diagram(entry: dict[str, Any], concept: str) -> tuple[str | None, list[Any], str]:
    """Inline SVG (or None when drawing is unavailable), the edges and their meaning."""
    nodes = _nodes(entry, MAX_DRAWN)
    edges, what = _edges(entry, nodes)
    total = len(entry.get("nodes") or [])
    if total > len(nodes):
        what += f"; the {len(nodes)} highest-ranked of its {total} nodes drawn"
    try:
        from vlmfast.causal.circuits.svg import circuit_to_svg
    except ImportError:
        return None, edges, what
    order, scores = entry.get("order") or [], entry.get("scores") or []
    score = {k: s for k, s in zip(order, scores, strict=False) if s is not None}
    rank = entry.get("ranking", "score")
    labels = {n.key: f"{rank} {number(score[n.key], 'delta')}" for n in nodes if n.key in score}
    strongest = max((abs(e.effect) for e in edges), default=0.0)
    cut = EDGE_FLOOR * strongest
    if cut > 0:
        what += f"; edges under {number(EDGE_FLOOR * 100, 'pct')} of the strongest not drawn"
    try:
        svg = circuit_to_svg(nodes, edges, labels, min_effect=cut, title=f"circuit for {concept}")
    except Exception:  # an unexpected graph must not break the whole report
        return None, edges, what
    return strip_namespace(svg), edges, what


def circuits(run: RunDir) -> dict[str, Any]:
    res = run.result("circuit")
    if not res:
        reason = run.why_missing("circuit") if res is None else "not run: no concept configured"
        return not_run("circuits", TITLE, reason)
    summary, node_rows, edge_rows = [], [], []
    for concept in sorted(res):
        e = res[concept]
        summary.append(_summary_row(concept, e))
        node_rows += _node_rows(concept, e)
        edge_rows += _edge_rows(concept, e)
    return section(
        "circuits",
        TITLE,
        [_summary_table(summary), _nodes_table(node_rows), _edges_table(edge_rows)],
    )


def _summary_row(concept: str, e: dict[str, Any]) -> dict[str, Any]:
    """A concept's circuit size, sparsity with its null, faithfulness and completeness."""
    null = e.get("null") or {}
    fi = e.get("faithfulness_interval") or [None, None]
    return {
        "concept": concept,
        "size": e.get("size"),
        "candidates": e.get("n_nodes"),
        "sparsity": e.get("sparsity"),
        "null": interval(
            null.get("sparsity_mean"), null.get("sparsity_low"), null.get("sparsity_high")
        )
        if null
        else None,
        "p": null.get("pvalue") if null else None,
        "faithfulness": interval(e.get("faithfulness"), fi[0], fi[1]),
        "completeness": e.get("completeness"),
        "ranking": f"{e.get('ranking')}, {e.get('ablation')} ablation",
        "paper": claim("circuit.sparsity"),
    }


def _node_rows(concept: str, e: dict[str, Any]) -> list[dict[str, Any]]:
    """The first ``MAX_LISTED`` nodes of a concept's circuit with their ranking scores."""
    order, scores = e.get("order") or [], e.get("scores") or []
    score = {k: s for k, s in zip(order, scores, strict=False)}
    return [
        {
            "concept": concept,
            "node": n.key,
            "tower": n.tower,
            "kind": n.kind,
            "layer": n.layer,
            "index": n.index,
            "score": score.get(n.key),
        }
        for n in _nodes(e, MAX_LISTED)
    ]


def _edge_rows(concept: str, e: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``MAX_EDGES`` strongest edges of a concept's circuit."""
    edges, _ = _edges(e, _nodes(e))
    return [
        {"concept": concept, "src": ed.src, "dst": ed.dst, "effect": ed.effect}
        for ed in sorted(edges, key=lambda x: (-abs(x.effect), x.src, x.dst))[:MAX_EDGES]
    ]


def _summary_table(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return table(
        "circuit_summary",
        "Circuit sparsity per concept, with its null",
        [
            col("concept", "concept", "text"),
            col("size", "nodes in circuit", "int"),
            col("candidates", "candidates", "int"),
            col("sparsity", "sparsity", "num"),
            col("null", "null sparsity [interval]", "num"),
            col("p", "p", "p"),
            col("faithfulness", "faithfulness [interval]", "num"),
            col("completeness", "completeness", "num"),
            col("ranking", "ranking", "text"),
            col("paper", "paper's claim", "text"),
        ],
        rows,
        "Sparsity = circuit size / candidates: the smallest size whose faithfulness "
        "f = (m(C) - m(empty)) / (m(model) - m(empty)) reaches the target from there "
        "on. Null: random orderings of the same candidates; p: share of null "
        "sparsities at most ours.",
    )


def _nodes_table(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return table(
        "circuit_nodes",
        f"Circuit nodes (the first {MAX_LISTED} in ranking order)",
        [
            col("concept", "concept", "text"),
            col("node", "node", "text"),
            col("tower", "tower", "text"),
            col("kind", "kind", "text"),
            col("layer", "layer", "int"),
            col("index", "index", "int"),
            col("score", "ranking score", "delta"),
        ],
        rows,
    )


def _edges_table(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return table(
        "circuit_edges",
        f"Circuit edges (strongest {MAX_EDGES} per concept)",
        [
            col("concept", "concept", "text"),
            col("src", "from", "text"),
            col("dst", "to", "text"),
            col("effect", "effect", "delta"),
        ],
        rows,
    )
