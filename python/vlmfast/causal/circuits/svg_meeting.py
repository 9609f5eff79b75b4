"""The meeting of the two towers in the SVG drawing: the embedding nodes and the logit.

Each tower's projection into the shared space (``image.embed`` / ``text.embed``) is a
trapezoid at the top of its lane, annotated with the user's label (``Meeting.labels``:
the embedding's exact effect); the logit, where the two embeddings are compared, is an
ellipse at the top centre with its own annotation (the total effect and the two towers'
interaction). ``svg.py`` lays them out and draws the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from html import escape

from vlmfast.causal.circuits.style import fill_color, fmt, text_color
from vlmfast.causal.circuits.types import EMBED, LOGIT, CircuitEdge

EMBED_BAND = 58.0
"""Height of the band between the towers and the logit that holds the embedding nodes."""
_NODE_W = 88.0
_NODE_H = 30.0
_NAMES = {"image": "image proj", "text": "text proj"}


def _n(x: float) -> str:
    s = f"{x:.1f}"
    return "0" if s in ("-0.0", "0.0") else s.removesuffix(".0")


def embed_towers(edges: Sequence[CircuitEdge]) -> list[str]:
    """The towers whose embedding node an edge starts or ends at, image first."""
    keys = {e.src for e in edges} | {e.dst for e in edges}
    return [t for t, k in EMBED.items() if k in keys]


def meeting_nodes(
    pos: Mapping[str, tuple[float, float]],
    logit: tuple[float, float],
    totals: Mapping[str, float],
    labels: Mapping[str, str] | None,
    *,
    shape: Callable[[str, float, float, str], str],
    text: Callable[..., str],
) -> list[str]:
    """SVG groups of the embedding nodes present in ``pos`` and of the logit (with their
    ``<title>``s: key, total effect, annotation)."""
    labels = labels or {}
    scale = max((abs(totals.get(k, 0.0)) for k in EMBED.values()), default=0.0)
    out = []
    for tower, key in EMBED.items():
        if key not in pos:
            continue
        x, y = pos[key]
        total = totals.get(key, 0.0)
        fill = fill_color(total, scale)
        note = str(labels.get(key, "")).strip()
        title = f"{key}: {tower} tower's projection into the shared space, total {fmt(total)}"
        out.append(f"<g><title>{escape(title + (' | ' + note if note else ''))}</title>")
        out.append(shape("embed", x, y, fill))
        color = text_color(fill)
        if note:
            out.append(text(x, y - 1, _NAMES[tower], color))
            out.append(text(x, y + 10, note[:24], color, size=8))
        else:
            out.append(text(x, y + 3.5, _NAMES[tower], color))
        out.append("</g>")
    lx, ly = logit
    note = str(labels.get(LOGIT, "")).strip()
    title = "logit: where the towers meet" + (f" | {note}" if note else "")
    out.append(
        f'<g><title>{escape(title)}</title><ellipse cx="{_n(lx)}" cy="{_n(ly)}" '
        f'rx="{_n(_NODE_W / 2)}" ry="{_n(_NODE_H / 2)}" fill="#eeeeee" stroke="#333333" '
        f'stroke-width="1.5"/>{text(lx, ly + 4, "logit", "#000000", size=11)}'
    )
    if note:
        out.append(text(lx, ly - _NODE_H / 2 - 4, note, "#333333", size=9))
    out.append("</g>")
    return out


__all__ = ["EMBED_BAND", "embed_towers", "meeting_nodes"]
