"""A circuit as Graphviz DOT text (render it with ``dot -Tsvg``; nothing here needs Graphviz).

    print(vf.causal.circuit_to_dot(nodes, edges, labels={"image.L3.H2": "red (0.97)"}))

Layout: bottom to top (``rankdir=BT``); a cluster per tower (``cluster_image`` left,
``cluster_text`` right); nodes of one layer share a rank across both towers; the ``logit``
node, where the towers meet, is ranked above everything; when the edges run through the
towers' projections (``image.embed`` / ``text.embed``, trapezia in their tower's cluster),
those sit one rank below it. Heads are boxes, neurons
ellipses, SAE features diamonds, error nodes dashed boxes. Edge ``penwidth`` grows with
``sqrt(|effect| / max |effect|)``, colour by sign (blue +, red -), the effect in the
edge's ``tooltip``. Output is deterministic (sorted nodes, edges in input order after a
stable sort by key, fixed number formatting).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from vlmfast.causal.circuits.style import (
    check_graph,
    edge_color,
    edge_width,
    fill_color,
    fmt,
    node_lines,
    node_totals,
    text_color,
)
from vlmfast.causal.circuits.types import EMBED, LOGIT, CircuitEdge, CircuitNode

__all__ = ["circuit_to_dot"]

_SHAPES = {
    "heads": 'shape=box, style="rounded,filled"',
    "neurons": 'shape=ellipse, style="filled"',
    "features": 'shape=diamond, style="filled"',
    "errors": 'shape=box, style="dashed,filled"',
}


def quote(text: str) -> str:
    """A DOT double-quoted string: backslashes and quotes escaped, newlines as ``\\n``."""
    body = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + body.replace("\r", "").replace("\n", "\\n") + '"'


def circuit_to_dot(
    nodes: Sequence[CircuitNode],
    edges: Sequence[CircuitEdge],
    labels: Mapping[str, str] | None = None,
    *,
    min_effect: float = 0.0,
) -> str:
    """Returns the Graphviz DOT source of the circuit.

    Args:
        nodes: the circuit's nodes (both towers).
        edges: edges between them and into ``"logit"``; every endpoint must be a node.
        labels: optional ``{node key: text}``, drawn as the node's second line (e.g.
            ``"red (0.97)"`` under ``"L3 H2"``); the embedding nodes' and the logit's
            keys annotate those.
        min_effect: edges with ``|effect|`` below it are left out (and zero edges always).
    """
    ordered, drawn = check_graph(nodes, edges, min_effect)
    drawn = sorted(drawn, key=lambda e: (e.src, e.dst))
    scale = max((abs(e.effect) for e in drawn), default=0.0)
    totals = node_totals(ordered, drawn)
    node_scale = max((abs(totals[n.key]) for n in ordered), default=0.0)
    ends = {e.src for e in edges} | {e.dst for e in edges}
    embeds = [t for t, k in EMBED.items() if k in ends]
    out = [
        "digraph circuit {",
        "  rankdir=BT;",
        "  newrank=true;",
        '  node [fontname="Helvetica", fontsize=10];',
        "  edge [arrowsize=0.6];",
    ]
    for tower in ("image", "text"):
        members = [n for n in ordered if n.tower == tower]
        if not members and tower not in embeds:
            continue
        out.append(f"  subgraph cluster_{tower} {{")
        out.append(f"    label={quote(tower + ' tower')};")
        out.append('    style="rounded"; color="#999999";')
        for n in members:
            fill = fill_color(totals[n.key], node_scale)
            attrs = [
                f"label={quote(chr(10).join(node_lines(n, labels)))}",
                _SHAPES.get(n.kind, _SHAPES["heads"]),
                f'fillcolor="{fill}"',
                f'fontcolor="{text_color(fill)}"',
                f"tooltip={quote(f'{n.key}: total {fmt(totals[n.key])}')}",
            ]
            out.append(f"    {quote(n.key)} [{', '.join(attrs)}];")
        if tower in embeds:
            out.append(_embed_line(tower, totals, labels))
        out.append("  }")
    note = (labels or {}).get(LOGIT)
    out.append(
        f"  {quote(LOGIT)} [label={quote('logit' + (chr(10) + note if note else ''))}, "
        'shape=doubleoctagon, style="filled", fillcolor="#eeeeee"];'
    )
    for layer in sorted({n.layer for n in ordered}):
        same = " ".join(quote(n.key) + ";" for n in ordered if n.layer == layer)
        out.append(f"  {{ rank=same; {same} }}")
    if embeds:
        same = " ".join(quote(EMBED[t]) + ";" for t in embeds)
        out.append(f"  {{ rank=same; {same} }}")
    out.append(f"  {{ rank=max; {quote(LOGIT)}; }}")
    for e in drawn:
        attrs = [
            f"penwidth={edge_width(e.effect, scale):.2f}",
            f'color="{edge_color(e.effect)}"',
            f"tooltip={quote(f'{e.src} -> {e.dst}: {fmt(e.effect)}')}",
        ]
        out.append(f"  {quote(e.src)} -> {quote(e.dst)} [{', '.join(attrs)}];")
    out.append("}")
    return "\n".join(out) + "\n"


def _embed_line(tower: str, totals: dict[str, float], labels: Mapping[str, str] | None) -> str:
    """The DOT line of ``tower``'s projection into the shared space."""
    key = EMBED[tower]
    note = (labels or {}).get(key)
    text = f"{tower} proj" + (f"\n{note}" if note else "")
    tip = f"{key}: {tower} tower's projection into the shared space, total {fmt(totals.get(key, 0.0))}"
    return (
        f'    {quote(key)} [label={quote(text)}, shape=trapezium, style="filled", '
        f'fillcolor="#eeeeee", tooltip={quote(tip)}];'
    )
