"""What the DOT and SVG circuit drawings share: node tags, colours, widths, input checks.

Colours are a fixed diverging pair (ColorBrewer RdBu ends): blue for a positive effect,
red for a negative one. Edge width grows with ``sqrt(|effect| / max |effect|)`` so weak
edges stay visible. A node's fill is the sum of its outgoing effects (for
``circuit_edges`` output: its AtP attribution), on the same scale.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from vlmfast.causal.circuits.types import EMBED, LOGIT, CircuitEdge, CircuitNode
from vlmfast.errors import InputError

POSITIVE = "#2166ac"
NEGATIVE = "#b2182b"
NEUTRAL = "#f7f7f7"
MIN_WIDTH = 0.6
MAX_WIDTH = 6.0
_TAGS = {"heads": "H", "neurons": "N", "features": "F", "errors": "E"}


def tag(node: CircuitNode) -> str:
    """``"L3 H2"`` (head), ``"L1 N17"`` (neuron), ``"L4 F9"`` (feature), ``"L4 E@3"`` (error)."""
    if node.kind == "errors":
        return f"L{node.layer} E@{node.index}"
    return f"L{node.layer} {_TAGS.get(node.kind, '?')}{node.index}"


def node_lines(node: CircuitNode, labels: Mapping[str, str] | None) -> list[str]:
    """At most two lines: the tag, then the user's label (first line of it) if any."""
    lines = [tag(node)]
    if labels and node.key in labels:
        text = str(labels[node.key]).splitlines()
        if text and text[0].strip():
            lines.append(text[0].strip())
    return lines


def edge_color(effect: float) -> str:
    return POSITIVE if effect >= 0 else NEGATIVE


def edge_width(effect: float, scale: float) -> float:
    """``MIN + (MAX - MIN) * sqrt(|effect| / scale)``; ``scale`` is the largest ``|effect|``."""
    if scale <= 0:
        return MIN_WIDTH
    return MIN_WIDTH + (MAX_WIDTH - MIN_WIDTH) * math.sqrt(min(abs(effect) / scale, 1.0))


def fill_color(value: float, scale: float) -> str:
    """White blended towards blue (positive) or red (negative) by ``|value| / scale``."""
    if scale <= 0 or value == 0:
        return NEUTRAL
    t = min(abs(value) / scale, 1.0) * 0.75
    end = POSITIVE if value > 0 else NEGATIVE
    rgb = [int(end[i : i + 2], 16) for i in (1, 3, 5)]
    base = [int(NEUTRAL[i : i + 2], 16) for i in (1, 3, 5)]
    mixed = [round(b + (c - b) * t) for b, c in zip(base, rgb, strict=True)]
    return "#" + "".join(f"{c:02x}" for c in mixed)


def text_color(fill: str) -> str:
    """Black or white text, whichever reads on ``fill`` (relative luminance)."""
    r, g, b = (int(fill[i : i + 2], 16) / 255 for i in (1, 3, 5))
    return "#000000" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.45 else "#ffffff"


def check_graph(
    nodes: Sequence[CircuitNode], edges: Sequence[CircuitEdge], min_effect: float = 0.0
) -> tuple[list[CircuitNode], list[CircuitEdge]]:
    """Distinct nodes in a fixed order and the drawn edges, or InputError.

    Nodes are sorted by (tower, layer, kind, hook, index); edges must join known node
    keys (or end at ``"logit"``; a tower's embedding node ``EMBED[tower]`` may stand
    between its nodes and the logit) and have finite effects; edges with an effect of exactly
    0 or ``|effect| < min_effect`` are not drawn.
    """
    if isinstance(nodes, CircuitNode):
        raise InputError("nodes must be a sequence of CircuitNode, got a single node")
    by_key: dict[str, CircuitNode] = {}
    for n in nodes:
        if not isinstance(n, CircuitNode):
            raise InputError(f"nodes must hold CircuitNode objects, got {type(n).__name__}")
        if n.tower not in ("image", "text"):
            raise InputError(f"node {n.key}: tower must be 'image' or 'text'")
        if n.key in by_key and by_key[n.key] != n:
            raise InputError(f"two different nodes share the key {n.key!r}")
        by_key[n.key] = n
    kinds = list(_TAGS)
    ordered = sorted(
        by_key.values(),
        key=lambda n: (
            n.tower,
            n.layer,
            kinds.index(n.kind) if n.kind in kinds else len(kinds),
            n.hook or "",
            n.index,
        ),
    )
    if not isinstance(min_effect, int | float) or not min_effect >= 0:
        raise InputError(f"min_effect must be a number >= 0, got {min_effect!r}")
    drawn: list[CircuitEdge] = []
    for e in edges:
        if not isinstance(e, CircuitEdge):
            raise InputError(f"edges must hold CircuitEdge objects, got {type(e).__name__}")
        embeds = EMBED.values()
        if e.src not in by_key and not (e.src in embeds and e.dst == LOGIT):
            raise InputError(f"edge {e.src} -> {e.dst}: source {e.src!r} is not in nodes")
        if e.dst != LOGIT and e.dst not in by_key and e.dst not in embeds:
            raise InputError(f"edge {e.src} -> {e.dst}: destination {e.dst!r} is not in nodes")
        if not math.isfinite(float(e.effect)):
            raise InputError(f"edge {e.src} -> {e.dst} has a non-finite effect {e.effect!r}")
        if float(e.effect) != 0.0 and abs(float(e.effect)) >= min_effect:
            drawn.append(e)
    return ordered, drawn


def node_totals(nodes: Sequence[CircuitNode], edges: Sequence[CircuitEdge]) -> dict[str, float]:
    """Sum of each node's outgoing effects."""
    out = {n.key: 0.0 for n in nodes}
    for e in edges:
        out[e.src] = out.get(e.src, 0.0) + float(e.effect)
    return out


def fmt(x: float) -> str:
    """Fixed, locale-free number formatting (4 significant digits, ``-0`` as ``0``)."""
    s = f"{x:.4g}"
    return "0" if s in ("-0", "0") else s
