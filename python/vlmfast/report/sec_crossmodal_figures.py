"""Figures of the "Cross-modal binding" section: modality-split histograms, exemplar
images of the top bimodal features, grounding heads' attention maps over the image and
the two-tower circuit diagrams (inline SVG and data-URI PNGs, no URL)."""

from __future__ import annotations

import base64
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from vlmfast.report.run_dir import RunDir
from vlmfast.report.svg import histogram, strip_namespace

STAGE = "cross-modal"
BINS = 20


def _figure(inner: str, caption: str) -> str:
    return f"<figure>\n{inner}<figcaption>{escape(caption)}</figcaption></figure>"


def _img(path: Path, alt: str) -> str | None:
    """An ``<img>`` of a PNG file as a data URI (None when the file is missing)."""
    if not path.is_file():
        return None
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img class="sheet" alt="{escape(alt)}" src="data:image/png;base64,{data}">'


def split_histograms(res: dict[str, Any]) -> list[str]:
    """One histogram of the features' image share per setting (all pairs)."""
    out = []
    for key, label in (("gap_kept", "gap kept"), ("gap_removed", "gap removed")):
        d = ((res.get("shared") or {}).get(key) or {}).get("all") or {}
        split = (d.get("split") or {}).get("split")
        if not split:
            continue
        vals = np.array([v for v in split if v is not None], dtype=np.float64)
        edges = np.linspace(0.0, 1.0, BINS + 1)
        counts, _ = np.histogram(vals, bins=edges)
        dom = float((d.get("split") or {}).get("dominance") or 0.9)
        svg = histogram(
            edges,
            counts,
            title=f"modality split, {label} ({len(vals)} active features)",
            xlabel="share of activation mass on image rows",
            marks=[(1.0 - dom, "text"), (dom, "image")],
        )
        out.append(
            _figure(
                svg,
                f"Modality split of the shared dictionary's features ({label}): 0 = fires on "
                "captions only, 1 = on images only; red: the dominance cuts beyond which a "
                "significant feature is text-only / image-only.",
            )
        )
    return out


def exemplar_figures(run: RunDir, res: dict[str, Any]) -> list[str]:
    """Per listed bimodal feature: the images where it fires most, and its top captions."""
    base = run.stage_dir(STAGE)
    out = []
    for key, label in (("gap_kept", "gap kept"), ("gap_removed", "gap removed")):
        d = ((res.get("shared") or {}).get(key) or {}).get("all") or {}
        for f in d.get("bimodal") or []:
            img = _img(base / f["image_strip"], "exemplars") if f.get("image_strip") else None
            caps = "; ".join(f.get("captions") or [])
            if img is None:
                continue
            out.append(
                _figure(
                    img,
                    f"{label}, feature {f['feature']}: the images where it fires most; "
                    f"the captions where it fires most: {caps}",
                )
            )
    return out


def attention_figures(run: RunDir, res: dict[str, Any]) -> list[str]:
    """Each top grounding head's CLS attention over a few images (named object outlined)."""
    g = res.get("grounding") or {}
    out = []
    for m in g.get("maps") or []:
        img = _img(run.stage_dir(STAGE) / m["png"], f"attention L{m['layer']}H{m['head']}")
        if img is None:
            continue
        out.append(
            _figure(
                img,
                f"Head L{m['layer']}H{m['head']}: CLS attention over the patches (red), the "
                f"caption's named object outlined (blue): {', '.join(m.get('names') or [])}.",
            )
        )
    return out


def circuit_figures(run: RunDir) -> list[str]:
    """The drawing of each two-tower circuit: the cross-modal stage's own, then the
    circuit stage's."""
    from vlmfast.report.sec_crossmodal_causal import two_tower

    own = ((run.result(STAGE) or {}).get("two_tower") or {}).get("circuits") or {}
    found = [(STAGE, c, e) for c, e in sorted(own.items())]
    found += [("circuit", c, e) for c, e in two_tower(run.result("circuit") or {}).items()]
    out = []
    for stage, concept, e in found:
        drawing = ((e.get("meta") or {}).get("run") or {}).get("drawing")
        path = run.stage_dir(stage) / str(drawing or "")
        if not drawing or not path.is_file():
            continue
        out.append(
            _figure(
                strip_namespace(path.read_text()),
                f"Two-tower circuit for {concept} ({stage} stage): image components, text "
                "components and their projections into the shared embedding, meeting at "
                "the logit.",
            )
        )
    return out


def crossmodal_blocks(run: RunDir) -> list[str]:
    """Every figure of the section (empty when the stage did not run)."""
    res = run.result(STAGE)
    if not res:
        return []
    return [
        *split_histograms(res),
        *exemplar_figures(run, res),
        *attention_figures(run, res),
        *circuit_figures(run),
    ]
