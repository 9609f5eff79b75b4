"""Small SVG writers (heatmaps, histograms) with fixed number formatting: byte-stable.

No matplotlib: the output depends only on the data, so the same run gives the same
bytes. Inline SVG in HTML needs no ``xmlns``; :func:`standalone` adds it for files and
data URIs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from html import escape

import numpy as np
import numpy.typing as npt

from vlmfast.report.fmt import number

# matplotlib's RdBu, reversed: blue (negative) - white - red (positive)
_RDBU_R = [
    (5, 48, 97),
    (33, 102, 172),
    (67, 147, 195),
    (146, 197, 222),
    (209, 229, 240),
    (247, 247, 247),
    (253, 219, 199),
    (244, 165, 130),
    (214, 96, 77),
    (178, 24, 43),
    (103, 0, 31),
]


def _n(x: float) -> str:
    """A coordinate: 1 decimal, no trailing ``.0``."""
    s = f"{x:.1f}"
    return s[:-2] if s.endswith(".0") else s


def diverging(v: float, lim: float) -> str:
    """``#rrggbb`` of ``v`` on RdBu_r with limits ``[-lim, lim]`` (NaN: grey)."""
    if not math.isfinite(v):
        return "#cccccc"
    t = min(max((v / lim + 1.0) / 2.0, 0.0), 1.0) if lim > 0 else 0.5
    pos = t * (len(_RDBU_R) - 1)
    i = min(int(pos), len(_RDBU_R) - 2)
    f = pos - i
    a, b = _RDBU_R[i], _RDBU_R[i + 1]
    rgb = [round(a[k] + (b[k] - a[k]) * f) for k in range(3)]
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def text_on(fill: str) -> str:
    r, g, b = (int(fill[i : i + 2], 16) for i in (1, 3, 5))
    return "#000000" if 0.299 * r + 0.587 * g + 0.114 * b > 140 else "#ffffff"


def symmetric_limit(*arrays: npt.ArrayLike, floor: float = 0.0) -> float:
    """One symmetric colour limit for every array given: max |finite value| (>= floor)."""
    m = floor
    for a in arrays:
        x = np.asarray(a, dtype=np.float64)
        x = x[np.isfinite(x)]
        if x.size:
            m = max(m, float(np.abs(x).max()))
    return m if m > 0 else 1.0


def heatmap(
    data: npt.ArrayLike,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    lim: float,
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    value: str = "value",
    cell_w: float = 26.0,
    cell_h: float = 13.0,
    weak: npt.ArrayLike | None = None,
) -> str:
    """``data[rows, cols]`` as coloured cells (rows top to bottom), a colour bar at
    ``[-lim, lim]`` and a ``<title>`` per cell with its value; cells where ``weak`` (bool,
    same shape) is true are struck through with a grey diagonal."""
    a = np.asarray(data, dtype=np.float64)
    hatch = None if weak is None else np.asarray(weak, dtype=bool)
    n_r, n_c = a.shape
    left = 24.0 + 6.0 * max((len(s) for s in row_labels), default=2)
    top, bar_w = 28.0, 12.0
    gw, gh = n_c * cell_w, n_r * cell_h
    width = max(left + gw + 70.0, 12.0 + 6.2 * len(title))
    height = top + gh + 40.0
    out = [
        f'<svg width="{_n(width)}" height="{_n(height)}" viewBox="0 0 {_n(width)} {_n(height)}" '
        'role="img" font-family="Helvetica, Arial, sans-serif" font-size="9">',
        f"<title>{escape(title)}</title>",
        f'<text x="{_n(left)}" y="14" font-size="11">{escape(title)}</text>',
    ]
    for i in range(n_r):
        y = top + i * cell_h
        out.append(
            f'<text x="{_n(left - 4)}" y="{_n(y + cell_h * 0.75)}" text-anchor="end">'
            f"{escape(row_labels[i])}</text>"
        )
        for j in range(n_c):
            v = float(a[i, j])
            x = left + j * cell_w
            out.append(
                f'<rect x="{_n(x)}" y="{_n(y)}" width="{_n(cell_w)}" height="{_n(cell_h)}" '
                f'fill="{diverging(v, lim)}"><title>{escape(ylabel)} {escape(row_labels[i])}, '
                f"{escape(xlabel)} {escape(col_labels[j])}: {value} {number(v)}</title></rect>"
            )
            if hatch is not None and hatch[i, j]:
                out.append(
                    f'<line x1="{_n(x + 1)}" y1="{_n(y + cell_h - 1)}" x2="{_n(x + cell_w - 1)}" '
                    f'y2="{_n(y + 1)}" stroke="#888888" stroke-width="0.8"/>'
                )
    step = max(1, math.ceil(n_c / 24))
    for j in range(0, n_c, step):
        x = left + (j + 0.5) * cell_w
        out.append(
            f'<text x="{_n(x)}" y="{_n(top + gh + 11)}" text-anchor="middle">'
            f"{escape(col_labels[j])}</text>"
        )
    out.append(
        f'<text x="{_n(left + gw / 2)}" y="{_n(top + gh + 26)}" text-anchor="middle">'
        f"{escape(xlabel)}</text>"
    )
    out.append(
        f'<text x="10" y="{_n(top + gh / 2)}" transform="rotate(-90 10 {_n(top + gh / 2)})" '
        f'text-anchor="middle">{escape(ylabel)}</text>'
    )
    out += _colour_bar(left + gw + 12, top, bar_w, gh, lim)
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _colour_bar(bx: float, top: float, bar_w: float, gh: float, lim: float) -> list[str]:
    """A vertical diverging colour bar from ``lim`` (top) to ``-lim``, with three ticks."""
    out = []
    steps = 20
    for k in range(steps):
        v = lim - (k + 0.5) * 2 * lim / steps
        y = top + k * gh / steps
        out.append(
            f'<rect x="{_n(bx)}" y="{_n(y)}" width="{_n(bar_w)}" height="{_n(gh / steps + 0.5)}" '
            f'fill="{diverging(v, lim)}"/>'
        )
    for frac, v in ((0.0, lim), (0.5, 0.0), (1.0, -lim)):
        out.append(
            f'<text x="{_n(bx + bar_w + 3)}" y="{_n(top + frac * gh + 3)}">{number(v)}</text>'
        )
    return out


def histogram(
    edges: npt.ArrayLike,
    counts: npt.ArrayLike,
    *,
    title: str,
    xlabel: str,
    null: npt.ArrayLike | None = None,
    marks: Sequence[tuple[float, str]] = (),
    width: float = 300.0,
    height: float = 150.0,
    log: bool = False,
) -> str:
    """Bars of ``counts`` over bins ``edges``; ``null`` (same bins) as a grey step line;
    ``marks`` as dashed vertical lines with a label."""
    width = max(width, 40.0 + 5.6 * len(title))
    e = np.asarray(edges, dtype=np.float64)
    c = np.asarray(counts, dtype=np.float64)
    nl = None if null is None else np.asarray(null, dtype=np.float64)
    left, top, bottom, right = 36.0, 22.0, 30.0, 18.0
    pw, ph = width - left - right, height - top - bottom

    def tr(v: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return np.log10(1.0 + v) if log else v

    ymax = float(max(tr(c).max(initial=0.0), tr(nl).max(initial=0.0) if nl is not None else 0.0))
    ymax = ymax if ymax > 0 else 1.0
    x0, x1 = float(e[0]), float(e[-1])
    span = x1 - x0 if x1 > x0 else 1.0

    def X(v: float) -> float:
        return left + (v - x0) / span * pw

    def Y(v: float) -> float:
        return top + ph - v / ymax * ph

    out = [
        f'<svg width="{_n(width)}" height="{_n(height)}" viewBox="0 0 {_n(width)} {_n(height)}" '
        'role="img" font-family="Helvetica, Arial, sans-serif" font-size="9">',
        f"<title>{escape(title)}</title>",
        f'<text x="{_n(left)}" y="13" font-size="10">{escape(title)}</text>',
        f'<line x1="{_n(left)}" y1="{_n(top + ph)}" x2="{_n(left + pw)}" y2="{_n(top + ph)}" '
        'stroke="#444444"/>',
    ]
    tc = tr(c)
    for k in range(len(c)):
        h = float(tc[k]) / ymax * ph
        out.append(
            f'<rect x="{_n(X(e[k]))}" y="{_n(top + ph - h)}" width="{_n(max(X(e[k + 1]) - X(e[k]) - 0.5, 0.5))}" '
            f'height="{_n(h)}" fill="#4c78a8"><title>[{number(e[k])}, {number(e[k + 1])}): '
            f"{number(int(c[k]), 'int')}</title></rect>"
        )
    if nl is not None:
        out.append(_step_line(e, tr(nl), X, Y))
    for v, label in marks:
        out.append(_mark(X(v), top, ph, label))
    for v in (x0, (x0 + x1) / 2, x1):
        out.append(
            f'<text x="{_n(X(v))}" y="{_n(top + ph + 11)}" text-anchor="middle">{number(v)}</text>'
        )
    out.append(
        f'<text x="{_n(left + pw / 2)}" y="{_n(height - 4)}" text-anchor="middle">{escape(xlabel)}</text>'
    )
    ylab = "log10(1 + count)" if log else "count"
    out.append(
        f'<text x="9" y="{_n(top + ph / 2)}" transform="rotate(-90 9 {_n(top + ph / 2)})" '
        f'text-anchor="middle">{ylab}</text>'
    )
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _step_line(
    e: npt.NDArray[np.float64],
    tn: npt.NDArray[np.float64],
    X: Callable[[float], float],
    Y: Callable[[float], float],
) -> str:
    """The null histogram ``tn`` over bins ``e`` as a grey step line."""
    pts = []
    for k in range(len(tn)):
        pts.append(f"{_n(X(e[k]))},{_n(Y(float(tn[k])))}")
        pts.append(f"{_n(X(e[k + 1]))},{_n(Y(float(tn[k])))}")
    return (
        f'<polyline points="{" ".join(pts)}" fill="none" stroke="#777777" stroke-width="1.5">'
        "<title>null</title></polyline>"
    )


def _mark(x: float, top: float, ph: float, label: str) -> str:
    """A dashed vertical line at ``x`` with its label."""
    return (
        f'<line x1="{_n(x)}" y1="{_n(top)}" x2="{_n(x)}" y2="{_n(top + ph)}" '
        'stroke="#d62728" stroke-dasharray="3,2"/>'
        f'<text x="{_n(x + 2)}" y="{_n(top + 8)}" fill="#d62728">{escape(label)}</text>'
    )


def standalone(svg: str) -> str:
    """The SVG with its namespace, for a file or a data URI."""
    if svg.startswith("<svg ") and "xmlns=" not in svg.split(">", 1)[0]:
        return '<svg xmlns="http://www.w3.org/2000/svg" ' + svg[5:]
    return svg


def strip_namespace(svg: str) -> str:
    """Inline SVG in HTML needs no ``xmlns`` (and the page then names no URL at all)."""
    return svg.replace(' xmlns="http://www.w3.org/2000/svg"', "").replace(
        ' xmlns:xlink="http://www.w3.org/1999/xlink"', ""
    )
