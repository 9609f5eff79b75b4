"""Feature dashboards: top images with patch activations overlaid, top captions with
token activations shaded, an activation histogram, the label with its AUROC.

In the report: each planted concept's best feature (synthetic runs), else each concept's
best feature; every dashboard feature (plus the top 3 per concept) also gets its own page
under ``RUN/report/features/``. Images are regenerated from the store's dataset spec
(the store keeps activations and labels, not pixels) and embedded as PNG data URIs.
Overlays follow saev: one rectangle per patch, opacity = value / ``upper``, where
``upper`` is the largest patch value over the card's examples (so a card's overlays
compare), stated on the card.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from vlmfast.report.fmt import cell, interval, number
from vlmfast.report.run_dir import RunDir
from vlmfast.report.score_tables import ScoreTable
from vlmfast.report.svg import histogram

EXAMPLES = 6
TILE = 96
INLINE_MAX = 32
PAGES_PER_CONCEPT = 3
HIST_ROWS = 16384
ENCODE_ELEMENTS = 2**26
"""Rows x latents encoded at once (256 MiB of float32 pre-activations)."""


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


def _z(level: float) -> float:
    from statistics import NormalDist

    return NormalDist().inv_cdf(0.5 + level / 2.0)


def select(run: RunDir, tables: list[ScoreTable]) -> list[Feature]:
    """The dashboard features of every SAE score table (sorted by modality, index)."""
    res = run.result("score") or {}
    gt = (res.get("ground_truth") or {}).get("concepts") or {}
    out: list[Feature] = []
    for t in tables:
        if t.source != "sae":
            continue
        au = np.where(np.isfinite(t.auroc), t.auroc, -1.0)
        inline: set[int] = set()
        for name in sorted(gt):
            e = (gt[name] or {}).get(t.modality)
            if e is not None and e.get("feature") is not None:
                inline.add(int(e["feature"]))
        if not inline:
            inline = {int(np.argmax(au[:, c])) for c in range(au.shape[1]) if au[:, c].max() > 0}
        inline = set(sorted(inline)[:INLINE_MAX])
        pages = set(inline)
        for c in range(au.shape[1]):
            order = np.argsort(-au[:, c], kind="stable")[:PAGES_PER_CONCEPT]
            pages.update(int(u) for u in order if au[u, c] > 0)
        for f in sorted(pages):
            c = int(np.argmax(au[f]))
            a = float(t.auroc[f, c])
            half = _z(t.level) * float(t.se[f, c]) if t.se is not None else 0.0
            out.append(
                Feature(
                    t,
                    f,
                    f in inline,
                    t.concepts[c],
                    interval(a, max(0.0, a - half), min(1.0, a + half)),
                    float(t.firing[f]) / t.n_rows if t.n_rows else 0.0,
                )
            )
    return out


def _records(spec: str, wanted: set[int]) -> dict[int, Any]:
    """The records of ``wanted`` sample ids, decoding only those images (the others are
    read past undecoded, as a resumed cache does)."""
    from vlmfast.data import open_source

    found: dict[int, Any] = {}
    if not wanted:
        return found
    src: Any = open_source(spec)
    last = max(wanted)

    def only(report: Any) -> Any:
        for r in src.candidates(report, after=min(wanted) - 1):
            if r.sample_id > last:
                return
            if r.sample_id in wanted:
                yield r

    records = src.decoded(only) if hasattr(src, "candidates") else iter(src)
    for r in records:
        if r.sample_id in wanted:
            found[r.sample_id] = r
        if len(found) == len(wanted) or r.sample_id >= last:
            break
    return found


def _sample_rows(index: Any, samples: set[int]) -> dict[int, tuple[int, int]]:
    """Row range ``[start, stop)`` of each wanted sample (samples are contiguous)."""
    s = np.asarray(index.sample)
    out: dict[int, tuple[int, int]] = {}
    for sid in sorted(samples):
        rows = np.flatnonzero(s == sid)
        if len(rows):
            out[sid] = (int(rows[0]), int(rows[-1]) + 1)
    return out


def _encode(sae: Any, x: Any, feats: list[int]) -> npt.NDArray[np.float64]:
    """Dense activations ``[rows, len(feats)]`` of the chosen features."""
    import torch

    dense = np.zeros((x.shape[0], len(feats)))
    colmap = np.full(int(sae.n_latents), -1, dtype=np.int64)
    colmap[np.asarray(feats, dtype=np.int64)] = np.arange(len(feats))
    # blocks of rows: the encoder's pre-activations are [rows, n_latents] (65k wide)
    step = max(1, ENCODE_ELEMENTS // max(int(sae.n_latents), 1))
    for lo in range(0, x.shape[0], step):
        with torch.no_grad():
            vals, idx = sae.encode(x[lo : lo + step].float())
        v, ix = vals.numpy().astype(np.float64), idx.numpy().astype(np.int64)
        j = colmap[ix]
        r, k = np.nonzero(j >= 0)
        dense[lo + r, j[r, k]] = v[r, k]
    return dense


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


def _tokenizer(model_spec: str) -> tuple[Any, Any] | None:
    """``(tokenize(list[str]) -> ids[B, T], token_text(id) -> str)`` of the run's model:
    the bundled word tokenizer without building the model, else the loaded pair's."""
    if model_spec.startswith("synthetic:"):
        from vlmfast.data.synthetic.tokenizer import WordTokenizer

        tok = WordTokenizer()
        return tok, lambda i: tok.vocab[i] if 0 <= i < len(tok.vocab) else f"<{i}>"
    try:
        import vlmfast as vf

        pair = vf.load_pair(model_spec)
    except Exception:  # no weights here: captions are shown without token shading
        return None
    inner = getattr(pair, "_tokenizer", None)

    def text(i: int) -> str:
        try:
            return str(inner.decode([i])).strip() or f"<{i}>"  # type: ignore[union-attr]
        except Exception:
            return f"<{i}>"

    return pair.tokenize, text


def _token_strings(tokenizer: tuple[Any, Any], caption: str, n: int) -> list[str]:
    tokenize, text = tokenizer
    ids = [int(i) for i in tokenize([caption])[0].tolist()][:n]
    return [text(i) for i in ids] + [f"#{k}" for k in range(len(ids), n)]


def render(run: RunDir, feats: list[Feature], log: Any = None) -> None:
    """Fills each feature's ``html`` (its card)."""
    if not feats:
        return
    from vlmfast.sae import TopKSAE
    from vlmfast.store import ActivationStore

    store_path = run.stage_dir("cache") / "store.zarr"
    store = ActivationStore.open(store_path) if store_path.is_dir() else None
    spec = ((store.attrs.get("dataset") or {}).get("spec")) if store is not None else None
    towers = (store.attrs.get("towers") or {}) if store is not None else {}
    by_table: dict[int, list[Feature]] = {}
    for f in feats:
        by_table.setdefault(id(f.table), []).append(f)
    wanted: set[int] = set()
    for f in feats:
        if f.table.top_samples is not None:
            wanted.update(int(s) for s in f.table.top_samples[f.index][:EXAMPLES] if s >= 0)
    records = _records(spec, wanted) if spec else {}
    tokenizer = None
    if store is not None and any(f.table.modality == "text" for f in feats):
        tokenizer = _tokenizer(str((store.attrs.get("model") or {}).get("spec", "")))
    for group in by_table.values():
        t = group[0].table
        sae_dir = run.stage_dir("train-sae") / t.modality
        sae = TopKSAE.load(sae_dir) if (sae_dir / "cfg.json").is_file() else None
        can = sae is not None and store is not None and t.hook in store.hooks
        idx_list = [f.index for f in group]
        acts: dict[int, npt.NDArray[np.float64]] = {}
        hist: npt.NDArray[np.float64] | None = None
        if can and store is not None:
            index = store.index(t.hook)
            rows = _sample_rows(index, wanted)
            if rows:
                import torch

                spans = list(rows.items())
                x = torch.cat([store.read(t.hook, a, b) for _, (a, b) in spans])
                dense_top = _encode(sae, x, idx_list)
                at = 0
                for sid, (a, b) in spans:
                    acts[sid] = dense_top[at : at + b - a]
                    at += b - a
            n = min(store.n_rows(t.hook), HIST_ROWS)
            dense = _encode(sae, store.read(t.hook, 0, n), idx_list)
            samples = np.asarray(index.sample)[:n]
            # per-sample max (what the scores use), over the samples fully inside the read
            keep = samples != samples[-1] if n < store.n_rows(t.hook) else np.ones(n, bool)
            uniq, inv = np.unique(samples[keep], return_inverse=True)
            hist = np.zeros((len(uniq), len(idx_list)))
            np.maximum.at(hist, inv, dense[keep])
        cls = bool((towers.get("image") or {}).get("cls_token"))
        isz, psz = (
            (towers.get("image") or {}).get("image_size"),
            (towers.get("image") or {}).get("patch_size"),
        )
        grid = int(isz // psz) if isz and psz else 0
        for j, f in enumerate(group):
            f.html = _card(f, j, records, acts, hist, cls, grid, tokenizer)


def _card(
    f: Feature,
    j: int,
    records: dict[int, Any],
    acts: dict[int, npt.NDArray[np.float64]],
    hist: npt.NDArray[np.float64] | None,
    cls: bool,
    grid: int,
    tokenizer: Any,
) -> str:
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
        tiles, shown = [], []
        upper = 0.0
        for sid in top:
            seen = acts.get(sid)
            if seen is not None:
                pv = seen[1:, j] if cls else seen[:, j]
                upper = max(upper, float(pv.max(initial=0.0)))
        for sid in top:
            r = records.get(sid)
            if r is None or r.image is None:
                continue
            got = acts.get(sid)
            patch = None if got is None else (got[1:, j] if cls else got[:, j])
            tiles.append(_tile(r.image, patch if grid else None, grid, upper))
            shown.append(sid)
        if tiles:
            parts.append(
                f'<img class="sheet" alt="top images of {escape(t.modality)} feature {f.index}" '
                f'src="{_png(_sheet(tiles))}">'
            )
            parts.append(
                f'<p class="meta">samples {", ".join(str(s) for s in shown)}; '
                f"magenta patch outline opacity = value / upper, upper = {number(upper)}</p>"
            )
    if t.modality == "text" and top:
        lines = []
        for sid, v in zip(top, vals + [float("nan")] * len(top), strict=False):
            r = records.get(sid)
            if r is None or not r.caption:
                continue
            a = acts.get(sid)
            if a is None or tokenizer is None:
                lines.append(f"<li>{escape(r.caption)}</li>")
                continue
            col = a[:, j]
            m = float(col.max(initial=0.0)) or 1.0
            toks = _token_strings(tokenizer, r.caption, len(col))
            spans = "".join(
                f'<span class="tok" style="background:rgba(255,160,0,{min(1.0, max(0.0, x / m)):.2f})" '
                f'title="{number(x)}">{escape(tok)}</span> '
                for tok, x in zip(toks, col.tolist(), strict=False)
            )
            lines.append(f'<li>{spans}<span class="meta">max {number(v)}</span></li>')
        if lines:
            parts.append('<ol class="captions">' + "".join(lines) + "</ol>")
    if hist is not None:
        col = hist[:, j]
        nz = col[col > 0]
        hi = float(nz.max()) if nz.size else 1.0
        edges = np.linspace(0.0, hi, 31)
        counts, _ = np.histogram(nz, bins=edges)
        parts.append(
            histogram(
                edges,
                counts,
                title=f"per-sample max activation (nonzero: {len(nz)} of {len(col)} samples)",
                xlabel="activation",
                width=280,
                height=120,
            )
        )
    parts.append("</div>")
    return "\n".join(parts)


def write_pages(out_dir: Path, feats: list[Feature], page: Any) -> list[Path]:
    """One self-contained page per feature (``page(title, body) -> html``)."""
    d = out_dir / "features"
    d.mkdir(parents=True, exist_ok=True)
    paths = []
    for f in feats:
        p = out_dir / f.page
        p.write_text(page(f"{f.table.modality} feature {f.index}", f.html))
        paths.append(p)
    return paths
