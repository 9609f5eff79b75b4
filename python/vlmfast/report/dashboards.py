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

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from vlmfast.report.cards import EXAMPLES, CardData, Feature, card
from vlmfast.report.fmt import interval
from vlmfast.report.run_dir import RunDir
from vlmfast.report.score_tables import ScoreTable
from vlmfast.report.sec_sae_eval import suite_line, with_suite
from vlmfast.store import schema as S

INLINE_MAX = 32
PAGES_PER_CONCEPT = 3
HIST_ROWS = 16384
ENCODE_ELEMENTS = 2**26
"""Rows x latents encoded at once (256 MiB of float32 pre-activations)."""


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


def render(run: RunDir, feats: list[Feature], log: Any = None) -> None:
    """Fills each feature's ``html`` (its card)."""
    if not feats:
        return
    from vlmfast.sae import TopKSAE
    from vlmfast.store import ActivationStore

    store_path = run.stage_dir("cache") / "store.zarr"
    store = ActivationStore.open(store_path) if store_path.is_dir() else None
    attrs = store.attrs if store is not None else {}
    spec = (attrs.get(S.ATTR_DATASET) or {}).get(S.DATASET_SPEC) if store is not None else None
    towers = (attrs.get(S.ATTR_TOWERS) or {}) if store is not None else {}
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
        tokenizer = _tokenizer(str((attrs.get(S.ATTR_MODEL) or {}).get(S.MODEL_SPEC, "")))
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
        image = towers.get(S.TOWER_IMAGE) or {}
        cls = bool(image.get(S.TOWER_CLS_TOKEN))
        isz, psz = image.get(S.TOWER_IMAGE_SIZE), image.get(S.TOWER_PATCH_SIZE)
        grid = int(isz // psz) if isz and psz else 0
        data = CardData(records, acts, hist, cls, grid, tokenizer)
        suite = suite_line(run, t.modality)  # the SAE's eval suite, as its section shows it
        for j, f in enumerate(group):
            f.html = with_suite(card(f, j, data), suite)


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
