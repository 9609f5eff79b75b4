"""The HTML card of one dashboard feature: its label and AUROC, the top images with
patch activations outlined, the top captions with token activations shaded, and the
histogram of its per-sample maxima (see :mod:`vlmfast.report.dashboards`)."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field
from html import escape
from typing import Any

import numpy as np
import numpy.typing as npt

from vlmfast.report.fmt import cell, number
from vlmfast.report.score_tables import ScoreTable
from vlmfast.report.svg import histogram

EXAMPLES = 6
TILE = 96


@dataclass
class Feature:
    """One dashboard feature and what its card shows."""

    table: ScoreTable
    index: int
    inline: bool
    concept: str = ""
    auroc: dict[str, Any] = field(default_factory=dict)
    density: float = 0.0
    html: str = ""

    @property
    def key(self) -> str:
        return f"{self.table.modality}_{self.index:05d}"

    @property
    def page(self) -> str:
        return f"features/{self.key}.html"


def _png(img: Any) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _tile(image: Any, patches: npt.NDArray[np.float64] | None, grid: int, upper: float) -> Any:
    from PIL import Image, ImageDraw

    im = image.convert("RGB")
    w, h = im.size
    s = min(w, h)
    im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    im = im.resize((TILE, TILE), Image.Resampling.NEAREST)
    if patches is None or upper <= 0:
        return im
    over = Image.new("RGBA", (TILE, TILE), (0, 0, 0, 0))
    draw = ImageDraw.Draw(over)
    step = TILE / grid
    for p, v in enumerate(patches[: grid * grid]):
        if v <= 0:
            continue
        # an outline, not a fill: the patch's own colours stay visible (color features)
        a = round(255 * min(v / upper, 1.0))
        y, x = divmod(p, grid)
        draw.rectangle(
            [
                round(x * step) + 1,
                round(y * step) + 1,
                round((x + 1) * step) - 2,
                round((y + 1) * step) - 2,
            ],
            outline=(255, 0, 255, a),
            width=3,
        )
    return Image.alpha_composite(im.convert("RGBA"), over).convert("RGB")


def _sheet(tiles: list[Any]) -> Any:
    from PIL import Image

    sheet = Image.new("RGB", (len(tiles) * (TILE + 4) - 4, TILE), (255, 255, 255))
    for i, t in enumerate(tiles):
        sheet.paste(t, (i * (TILE + 4), 0))
    return sheet


def _token_strings(tokenizer: tuple[Any, Any], caption: str, n: int) -> list[str]:
    tokenize, text = tokenizer
    ids = [int(i) for i in tokenize([caption])[0].tolist()][:n]
    return [text(i) for i in ids] + [f"#{k}" for k in range(len(ids), n)]


@dataclass(frozen=True)
class CardData:
    """What the cards of one score table draw from: the example records, their token
    activations by sample id, per-sample maxima for the histogram, the image layout."""

    records: dict[int, Any]
    acts: dict[int, npt.NDArray[np.float64]]
    hist: npt.NDArray[np.float64] | None
    cls: bool
    grid: int
    tokenizer: Any


def card(f: Feature, j: int, data: CardData) -> str:
    """The HTML card of feature ``f`` (column ``j`` of the group's activations)."""
    t = f.table
    top = [
        int(s)
        for s in (t.top_samples[f.index][:EXAMPLES] if t.top_samples is not None else [])
        if s >= 0
    ]
    vals = [
        float(v) for v in (t.top_values[f.index][:EXAMPLES] if t.top_values is not None else [])
    ]
    parts = [
        f'<div class="card" id="feat-{f.key}">',
        f"<h4>{escape(t.modality)} feature {f.index} &middot; {escape(f.concept)}</h4>",
        f'<p class="meta">AUROC for <b>{escape(f.concept)}</b>: {cell(f.auroc, "num")} '
        f"&middot; density {number(100 * f.density, 'pct')} &middot; {escape(t.describe())}</p>",
    ]
    if t.modality == "image" and top:
        parts += _image_examples(f, j, top, data)
    if t.modality == "text" and top:
        parts += _text_examples(j, top, vals, data)
    if data.hist is not None:
        parts.append(_histogram(data.hist[:, j]))
    parts.append("</div>")
    return "\n".join(parts)


def _image_examples(f: Feature, j: int, top: list[int], data: CardData) -> list[str]:
    """The top images as one sheet, patch activations outlined (shared upper bound)."""
    acts, cls, grid = data.acts, data.cls, data.grid
    tiles, shown = [], []
    upper = 0.0
    for sid in top:
        seen = acts.get(sid)
        if seen is not None:
            pv = seen[1:, j] if cls else seen[:, j]
            upper = max(upper, float(pv.max(initial=0.0)))
    for sid in top:
        r = data.records.get(sid)
        if r is None or r.image is None:
            continue
        got = acts.get(sid)
        patch = None if got is None else (got[1:, j] if cls else got[:, j])
        tiles.append(_tile(r.image, patch if grid else None, grid, upper))
        shown.append(sid)
    if not tiles:
        return []
    return [
        f'<img class="sheet" alt="top images of {escape(f.table.modality)} feature {f.index}" '
        f'src="{_png(_sheet(tiles))}">',
        f'<p class="meta">samples {", ".join(str(s) for s in shown)}; '
        f"magenta patch outline opacity = value / upper, upper = {number(upper)}</p>",
    ]


def _text_examples(j: int, top: list[int], vals: list[float], data: CardData) -> list[str]:
    """The top captions, each token shaded by its activation."""
    lines = []
    for sid, v in zip(top, vals + [float("nan")] * len(top), strict=False):
        r = data.records.get(sid)
        if r is None or not r.caption:
            continue
        a = data.acts.get(sid)
        if a is None or data.tokenizer is None:
            lines.append(f"<li>{escape(r.caption)}</li>")
            continue
        col = a[:, j]
        m = float(col.max(initial=0.0)) or 1.0
        toks = _token_strings(data.tokenizer, r.caption, len(col))
        spans = "".join(
            f'<span class="tok" style="background:rgba(255,160,0,{min(1.0, max(0.0, x / m)):.2f})" '
            f'title="{number(x)}">{escape(tok)}</span> '
            for tok, x in zip(toks, col.tolist(), strict=False)
        )
        lines.append(f'<li>{spans}<span class="meta">max {number(v)}</span></li>')
    if not lines:
        return []
    return ['<ol class="captions">' + "".join(lines) + "</ol>"]


def _histogram(col: npt.NDArray[np.float64]) -> str:
    """The histogram of a feature's nonzero per-sample maxima."""
    nz = col[col > 0]
    hi = float(nz.max()) if nz.size else 1.0
    edges = np.linspace(0.0, hi, 31)
    counts, _ = np.histogram(nz, bins=edges)
    return histogram(
        edges,
        counts,
        title=f"per-sample max activation (nonzero: {len(nz)} of {len(col)} samples)",
        xlabel="activation",
        width=280,
        height=120,
    )
