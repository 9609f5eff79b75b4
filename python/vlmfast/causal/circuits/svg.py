"""A circuit as a self-contained SVG, laid out in pure Python (no Graphviz needed).

    svg = vf.causal.circuit_to_svg(nodes, edges, labels={"image.L3.H2": "red (0.97)"})

Layout: a grid with one row per (layer, hook point) present, layers bottom to top (a
head's ``attn.z`` row sits below its block's ``mlp.post`` row; a row of more than 8
nodes wraps onto more lines); the image tower's nodes in the left column block, the
text tower's on the right (each line centred in its tower);
the ``logit`` node, where the towers meet, at the top centre. When the edges run through
the towers' projections into the shared space (``meeting.route_through_embeddings``), each
tower's embedding node (``image.embed`` / ``text.embed``, a trapezoid) sits at the top of
its lane, between the tower and the logit (``svg_meeting.py``). Heads are rounded boxes,
neurons ellipses, SAE features hexagons, error nodes dashed boxes; a node's fill is the
sum of its outgoing effects (its AtP attribution for ``circuit_edges`` output) on a
diverging white-blue/red scale. Edges are cubic paths from a node's top to its target's
bottom, ``stroke-width`` ``~ sqrt(|effect| / max)``, blue positive / red negative, drawn
weakest first with a ``<title>`` giving the effect. A legend sits under the towers.

Deterministic: the same input gives a byte-identical string (no ids, sorted nodes,
edges in a total order, fixed number formatting). Every user string is XML-escaped.
``engine="dot"`` renders :func:`circuit_to_dot` with the ``dot`` binary instead (when
installed; its output is Graphviz's, not byte-stable across Graphviz versions).
"""

from __future__ import annotations

import math
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from html import escape

from vlmfast.causal.circuits.style import (
    NEGATIVE,
    POSITIVE,
    check_graph,
    edge_color,
    edge_width,
    fill_color,
    fmt,
    node_lines,
    node_totals,
    text_color,
)
from vlmfast.causal.circuits.svg_meeting import EMBED_BAND, embed_towers, meeting_nodes
from vlmfast.causal.circuits.types import EMBED, LOGIT, CircuitEdge, CircuitNode
from vlmfast.errors import InputError
from vlmfast.models.layers import block_hook_points

__all__ = ["circuit_to_svg"]

COL_W = 100.0
ROW_H = 64.0
NODE_W = 88.0
NODE_H = 30.0
GAP = 70.0
LEFT = 44.0
RIGHT = 20.0
TOP = 16.0
LOGIT_BAND = 64.0
FOOT = 34.0
LEGEND = 56.0
MAX_LABEL = 18
MAX_COLS = 8
"""Nodes per line of a row; wider rows wrap."""
MIN_WIDTH = 420.0
"""Room for the legend."""
_STAGES = [p.split(".", 1)[1] for p in block_hook_points("x")]
_POINT = {"heads": "attn.z", "neurons": "mlp.post"}


def _n(x: float) -> str:
    """Coordinates with one decimal, ``-0.0`` as ``0``."""
    s = f"{x:.1f}"
    return "0" if s in ("-0.0", "0.0") else s.removesuffix(".0")


def _stage(node: CircuitNode) -> int:
    """Position of the node's hook inside its block (rows of one layer, bottom to top)."""
    point = _POINT.get(node.kind)
    if point is None and node.hook:
        parts = node.hook.split(".")
        if len(parts) > 3 and parts[1] == "blocks":
            point = ".".join(parts[3:])
    return _STAGES.index(point) if point in _STAGES else len(_STAGES)


def _short(text: str) -> str:
    return text if len(text) <= MAX_LABEL else text[: MAX_LABEL - 1] + "\u2026"


def circuit_to_svg(
    nodes: Sequence[CircuitNode],
    edges: Sequence[CircuitEdge],
    labels: Mapping[str, str] | None = None,
    *,
    min_effect: float = 0.0,
    title: str | None = None,
    engine: str = "python",
) -> str:
    """Returns the SVG text of the circuit (see the module doc for the layout).

    Args:
        nodes: the circuit's nodes (both towers).
        edges: edges between them and into ``"logit"``; every endpoint must be a node.
        labels: optional ``{node key: text}``, the node's second line (cut at 18 chars;
            the full text is in the node's ``<title>``); the embedding nodes' and the
            logit's keys annotate those.
        min_effect: edges with ``|effect|`` below it are left out (and zero edges always).
        title: optional caption drawn at the top left.
        engine: ``"python"`` (this layout) or ``"dot"`` (Graphviz, if installed).

    Raises:
        InputError: an unknown ``engine``, bad nodes or edges, or Graphviz missing or
            failing with ``engine="dot"``.
    """
    if engine not in ("python", "dot"):
        raise InputError(f"engine must be one of ['python', 'dot'], got {engine!r}")
    if engine == "dot":
        return _render_dot(nodes, edges, labels, min_effect)
    ordered, drawn = check_graph(nodes, edges, min_effect)
    totals = node_totals(ordered, drawn)
    edge_scale = max((abs(e.effect) for e in drawn), default=0.0)
    lay = _layout(ordered, embed_towers(edges))
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_n(lay.width)}" '
        f'height="{_n(lay.height)}" viewBox="0 0 {_n(lay.width)} {_n(lay.height)}" '
        'role="img" font-family="Helvetica, Arial, sans-serif" font-size="10">',
        "<title>" + escape(title or "circuit") + "</title>",
        f'<rect x="0" y="0" width="{_n(lay.width)}" height="{_n(lay.height)}" fill="#ffffff"/>',
    ]
    if title:
        out.append(f'<text x="6" y="14" font-size="12">{escape(title)}</text>')
    out += _frame(lay)
    out += _edges(lay, drawn, edge_scale)
    out += _nodes(lay, ordered, totals, labels)
    out += meeting_nodes(lay.pos, lay.logit, totals, labels, shape=_shape, text=_text)
    out.append(_legend(lay.height - LEGEND + 10, edge_scale))
    out.append("</svg>")
    return "\n".join(out) + "\n"


@dataclass
class _Layout:
    pos: dict[str, tuple[float, float]]
    logit: tuple[float, float]
    layer_y: dict[int, float]
    """y of the lowest row of each layer (where its label goes)."""
    x0: dict[str, float]
    tower_w: dict[str, float]
    grid_top: float
    grid_h: float
    width: float
    height: float


def _layout(ordered: Sequence[CircuitNode], embeds: Sequence[str] = ()) -> _Layout:
    """Grid rows per (layer, hook point), bottom to top; a row wider than ``MAX_COLS`` nodes
    (SAE features, error nodes) wraps onto extra lines of the same row."""
    rows = sorted({(n.layer, _stage(n)) for n in ordered})
    cells: dict[tuple[str, tuple[int, int]], list[CircuitNode]] = {}
    for n in ordered:
        cells.setdefault((n.tower, (n.layer, _stage(n))), []).append(n)
    lines = {
        r: max([math.ceil(len(v) / MAX_COLS) for (_, rr), v in cells.items() if rr == r] or [1])
        for r in rows
    }
    band = EMBED_BAND if embeds else 0.0
    grid_top = TOP + LOGIT_BAND + band
    n_lines = sum(lines.values()) or 1
    grid_h = n_lines * ROW_H
    # line 0 is the bottom line; a row's first (lowest) line holds its first nodes
    first_line: dict[tuple[int, int], int] = {}
    acc = 0
    for r in rows:
        first_line[r] = acc
        acc += lines[r]

    def line_y(i: int) -> float:
        return grid_top + (n_lines - 1 - i) * ROW_H + ROW_H / 2

    tower_w = {
        t: COL_W * min(MAX_COLS, max([len(v) for (tw, _), v in cells.items() if tw == t] or [1]))
        for t in ("image", "text")
    }
    x0 = {"image": LEFT, "text": LEFT + tower_w["image"] + GAP}
    width = max(x0["text"] + tower_w["text"] + RIGHT, MIN_WIDTH)
    pos: dict[str, tuple[float, float]] = {}
    for (t, r), members in sorted(cells.items()):
        for start in range(0, len(members), MAX_COLS):
            chunk = members[start : start + MAX_COLS]
            offset = x0[t] + (tower_w[t] - COL_W * len(chunk)) / 2
            y = line_y(first_line[r] + start // MAX_COLS)
            for j, n in enumerate(chunk):
                pos[n.key] = (offset + COL_W * (j + 0.5), y)
    for t in embeds:
        pos[EMBED[t]] = (x0[t] + tower_w[t] / 2, TOP + LOGIT_BAND + band / 2 - 4)
    layer_y: dict[int, float] = {}
    for r in rows:
        layer_y.setdefault(r[0], line_y(first_line[r]))
    return _Layout(
        pos=pos,
        logit=((LEFT + x0["text"] + tower_w["text"]) / 2, TOP + LOGIT_BAND / 2 - 6),
        layer_y=layer_y,
        x0=x0,
        tower_w=tower_w,
        grid_top=grid_top,
        grid_h=grid_h,
        width=width,
        height=grid_top + grid_h + FOOT + LEGEND,
    )


def _frame(lay: _Layout) -> list[str]:
    """Tower frames and names, layer labels."""
    out = []
    for t in ("image", "text"):
        out.append(
            f'<rect x="{_n(lay.x0[t] - 6)}" y="{_n(lay.grid_top - 6)}" '
            f'width="{_n(lay.tower_w[t] + 12)}" height="{_n(lay.grid_h + 12)}" rx="8" '
            'fill="none" stroke="#bbbbbb"/>'
        )
        out.append(
            f'<text x="{_n(lay.x0[t] + lay.tower_w[t] / 2)}" '
            f'y="{_n(lay.grid_top + lay.grid_h + 22)}" text-anchor="middle" '
            f'font-size="11">{t} tower</text>'
        )
    for layer, y in sorted(lay.layer_y.items()):
        out.append(
            f'<text x="{_n(LEFT - 12)}" y="{_n(y + 3.5)}" text-anchor="end" '
            f'fill="#666666">L{layer}</text>'
        )
    return out


def _edges(lay: _Layout, drawn: Sequence[CircuitEdge], scale: float) -> list[str]:
    """Cubic paths from the source's top to the target's bottom, weakest first."""
    out = ['<g fill="none" stroke-linecap="round" stroke-opacity="0.8">']
    for e in sorted(drawn, key=lambda e: (abs(e.effect), e.src, e.dst, e.effect)):
        sx, sy = lay.pos[e.src]
        sy -= NODE_H / 2
        dx, dy = lay.logit if e.dst == LOGIT else lay.pos[e.dst]
        dy += NODE_H / 2
        mid = (sy + dy) / 2
        d = f"M{_n(sx)},{_n(sy)} C{_n(sx)},{_n(mid)} {_n(dx)},{_n(mid)} {_n(dx)},{_n(dy)}"
        out.append(
            f'<path d="{d}" stroke="{edge_color(e.effect)}" '
            f'stroke-width="{edge_width(e.effect, scale):.2f}">'
            f"<title>{escape(f'{e.src} -> {e.dst}: {fmt(e.effect)}')}</title></path>"
        )
    out.append("</g>")
    return out


def _nodes(
    lay: _Layout,
    ordered: Sequence[CircuitNode],
    totals: Mapping[str, float],
    labels: Mapping[str, str] | None,
) -> list[str]:
    scale = max((abs(totals[n.key]) for n in ordered), default=0.0)
    out = []
    for n in ordered:
        x, y = lay.pos[n.key]
        fill = fill_color(totals[n.key], scale)
        lines = node_lines(n, labels)
        full = f"{n.key}: total {fmt(totals[n.key])}"
        if len(lines) > 1 and labels is not None:
            full += " | " + str(labels[n.key])
        out.append(f"<g><title>{escape(full)}</title>")
        out.append(_shape(n.kind, x, y, fill))
        color = text_color(fill)
        if len(lines) == 1:
            out.append(_text(x, y + 3.5, lines[0], color))
        else:
            out.append(_text(x, y - 3, lines[0], color))
            out.append(_text(x, y + 9, _short(lines[1]), color, size=9))
        out.append("</g>")
    return out


def _text(x: float, y: float, text: str, color: str, size: float = 10) -> str:
    return (
        f'<text x="{_n(x)}" y="{_n(y)}" text-anchor="middle" fill="{color}" '
        f'font-size="{_n(size)}">{escape(text)}</text>'
    )


def _shape(kind: str, x: float, y: float, fill: str) -> str:
    w, h = NODE_W, NODE_H
    common = f'fill="{fill}" stroke="#333333"'
    if kind == "embed":  # a tower's projection into the shared space: a trapezoid
        pts = [(x - w / 2, y + h / 2), (x + w / 2, y + h / 2), (x + w / 3, y - h / 2),
               (x - w / 3, y - h / 2)]  # fmt: skip
        return f'<polygon points="{" ".join(f"{_n(a)},{_n(b)}" for a, b in pts)}" {common}/>'
    if kind == "neurons":
        return f'<ellipse cx="{_n(x)}" cy="{_n(y)}" rx="{_n(w / 2)}" ry="{_n(h / 2)}" {common}/>'
    if kind == "features":
        c = h / 2
        pts = [
            (x - w / 2, y), (x - w / 2 + c, y - h / 2), (x + w / 2 - c, y - h / 2),
            (x + w / 2, y), (x + w / 2 - c, y + h / 2), (x - w / 2 + c, y + h / 2),
        ]  # fmt: skip
        return f'<polygon points="{" ".join(f"{_n(a)},{_n(b)}" for a, b in pts)}" {common}/>'
    dash = ' stroke-dasharray="4 3"' if kind == "errors" else ""
    return (
        f'<rect x="{_n(x - w / 2)}" y="{_n(y - h / 2)}" width="{_n(w)}" height="{_n(h)}" '
        f'rx="6" {common}{dash}/>'
    )


def _legend(y: float, scale: float) -> str:
    x = 10.0
    parts = ['<g font-size="9">']
    for color, name in ((POSITIVE, "+ effect"), (NEGATIVE, "\u2212 effect")):
        parts.append(
            f'<line x1="{_n(x)}" y1="{_n(y)}" x2="{_n(x + 24)}" y2="{_n(y)}" stroke="{color}" '
            f'stroke-width="3"/><text x="{_n(x + 28)}" y="{_n(y + 3)}">{escape(name)}</text>'
        )
        x += 80
    parts.append(
        f'<text x="{_n(x)}" y="{_n(y + 3)}">width \u221d \u221a|effect| '
        f"(max {escape(fmt(scale))})</text>"
    )
    x, y2 = 10.0, y + 24
    for kind, name in (
        ("heads", "head"),
        ("neurons", "neuron"),
        ("features", "SAE feature"),
        ("errors", "SAE error"),
    ):
        parts.append(_shape_small(kind, x + 12, y2))
        parts.append(f'<text x="{_n(x + 28)}" y="{_n(y2 + 3)}">{name}</text>')
        x += 90
    parts.append("</g>")
    return "".join(parts)


def _shape_small(kind: str, x: float, y: float) -> str:
    common = 'fill="#f7f7f7" stroke="#333333"'
    if kind == "neurons":
        return f'<ellipse cx="{_n(x)}" cy="{_n(y)}" rx="10" ry="6" {common}/>'
    if kind == "features":
        pts = [
            (x - 10, y),
            (x - 5, y - 6),
            (x + 5, y - 6),
            (x + 10, y),
            (x + 5, y + 6),
            (x - 5, y + 6),
        ]
        return f'<polygon points="{" ".join(f"{_n(a)},{_n(b)}" for a, b in pts)}" {common}/>'
    dash = ' stroke-dasharray="3 2"' if kind == "errors" else ""
    return f'<rect x="{_n(x - 10)}" y="{_n(y - 6)}" width="20" height="12" rx="3" {common}{dash}/>'


def _render_dot(
    nodes: Sequence[CircuitNode],
    edges: Sequence[CircuitEdge],
    labels: Mapping[str, str] | None,
    min_effect: float,
) -> str:
    from vlmfast.causal.circuits.dot import circuit_to_dot

    exe = shutil.which("dot")
    if exe is None:
        raise InputError(
            "engine='dot' needs the Graphviz 'dot' binary on PATH (apt-get install graphviz); "
            "engine='python' needs nothing"
        )
    source = circuit_to_dot(nodes, edges, labels, min_effect=min_effect)
    done = subprocess.run(
        [exe, "-Tsvg"], input=source, capture_output=True, text=True, check=False, timeout=60
    )
    if done.returncode != 0:
        raise InputError(f"dot -Tsvg failed: {done.stderr.strip()[:500]}")
    return done.stdout
