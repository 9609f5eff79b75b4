"""The report's figures, as inline SVG: trace and head heatmaps, AUROC distributions.

Colour limits are symmetric and shared: both towers' trace heatmaps of a kind use one
limit (at least 1, full recovery), the attribution heatmaps of a kind another.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vlmfast.report.fmt import number
from vlmfast.report.run_dir import RunDir
from vlmfast.report.score_tables import ScoreTable, null_sd
from vlmfast.report.svg import heatmap, histogram, symmetric_limit

TOWERS = ("image", "text")
P_WEAK = 0.05
"""Trace cells whose null p-value is at least this are struck through."""


@dataclass(frozen=True)
class Figure:
    section: str
    caption: str
    svg: str


def trace_figures(run: RunDir) -> list[Figure]:
    res = run.result("trace")
    if res is None:
        return []
    towers = [t for t in TOWERS if isinstance(res.get(t), dict)]
    kinds = sorted({k for t in towers for k in res[t]["recovery"]})
    out = []
    for kind in kinds:
        tables = {
            t: np.asarray(res[t]["recovery"][kind], dtype=np.float64)
            for t in towers
            if kind in res[t]["recovery"]
        }
        lim = symmetric_limit(*tables.values(), floor=1.0)
        for tower, rec in tables.items():
            tr = res[tower]
            layers = [str(x) for x in tr["layers"]]
            if kind == "heads":
                rows = [f"h{j}" for j in range(rec.shape[1])]
                ylabel = "head"
            else:
                rows = list(tr["labels"])
                ylabel = "restored position"
            null = (tr.get("null") or {}).get(kind)
            weak = None
            if null:
                weak = (np.asarray(null["p_value"], dtype=np.float64) >= P_WEAK).T
            svg = heatmap(
                rec.T,
                rows,
                layers,
                lim,
                weak=weak,
                title=f"{tower} tower, {kind}: recovery (clean {number(tr['clean'])}, corrupt {number(tr['corrupt'])}, n={tr['samples']})",
                xlabel="layer",
                ylabel=ylabel,
                value="recovery",
            )
            section = "heads" if kind == "heads" else "tracing"
            out.append(
                Figure(
                    section,
                    f"Causal trace of the {tower} tower ({kind}), layer x "
                    f"{'head' if kind == 'heads' else 'position'}; colour limits +/-{number(lim)} "
                    "shared by both towers"
                    + (
                        f"; struck-through cells: permutation p >= {number(P_WEAK)} against "
                        "the random-restoration null."
                        if weak is not None
                        else "; no null was drawn."
                    ),
                    svg,
                )
            )
    return out


def attribution_figures(run: RunDir) -> list[Figure]:
    res = run.result("attribute")
    if res is None:
        return []
    scores = res.get("scores") or {}
    out = []
    for kind in sorted({k.split("/")[1] for k in scores}):
        keys = [f"{t}/{kind}" for t in TOWERS if f"{t}/{kind}" in scores]
        mats = {k: np.asarray(scores[k], dtype=np.float64) for k in keys}
        lim = symmetric_limit(*mats.values())
        for key, s in mats.items():
            tower = key.split("/")[0]
            if kind == "neurons" or s.shape[1] > 64:
                continue  # too wide for a cell grid; the tables carry the top components
            cols = [f"h{j}" if kind == "heads" else str(j) for j in range(s.shape[1])]
            out.append(
                Figure(
                    "heads",
                    f"Attribution ({res.get('method')}) of every {tower} {kind[:-1] if kind.endswith('s') else kind}, "
                    f"layer x {'head' if kind == 'heads' else 'position'}; limits +/-{number(lim)} shared by both towers.",
                    heatmap(
                        s,
                        [str(i) for i in range(s.shape[0])],
                        cols,
                        lim,
                        title=f"{tower} {kind}: attribution score change",
                        xlabel="head" if kind == "heads" else "position",
                        ylabel="layer",
                        value="score",
                        cell_w=22.0 if kind == "heads" else 14.0,
                    ),
                )
            )
    exact = res.get("exact_heads") or {}
    mats = {k: np.asarray(v["effect"], dtype=np.float64) for k, v in sorted(exact.items())}
    lim = symmetric_limit(*mats.values())
    for key, s in mats.items():
        tower = key.split("/")[0]
        out.append(
            Figure(
                "heads",
                f"Exact patching of every {tower} head (score change), layer x head; "
                f"limits +/-{number(lim)} shared by both towers.",
                heatmap(
                    s,
                    [str(i) for i in range(s.shape[0])],
                    [f"h{j}" for j in range(s.shape[1])],
                    lim,
                    title=f"{tower} heads: exact patching score change",
                    xlabel="head",
                    ylabel="layer",
                    value="change",
                    cell_w=22.0,
                ),
            )
        )
    return out


BINS = 30


def auroc_hist(t: ScoreTable, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bins, counts of the (unit, concept) AUROCs of ``kind``'s concepts, and the null's
    expected counts per bin (each concept's AUROC ~ N(0.5, sd(P, Q)) under no association)."""
    from math import erf, sqrt

    cols = np.array([k == kind for k in t.kinds])
    edges = np.linspace(0.0, 1.0, BINS + 1)
    vals = t.auroc[:, cols].reshape(-1)
    vals = vals[np.isfinite(vals)]
    counts, _ = np.histogram(vals, bins=edges)
    null = np.zeros(BINS)
    n_units = t.auroc.shape[0]
    for sd in null_sd(t.n_pos, t.n_rows)[cols]:
        if not np.isfinite(sd):
            continue
        cdf = np.array([0.5 * (1 + erf((e - 0.5) / (sd * sqrt(2)))) for e in edges])
        null += n_units * np.diff(cdf)
    return edges, counts, null


def auroc_figures(tables: list[ScoreTable]) -> list[Figure]:
    out = []
    for t in tables:
        for kind in sorted(set(t.kinds)):
            edges, counts, null = auroc_hist(t, kind)
            out.append(
                Figure(
                    "selectivity",
                    f"AUROC of every (unit, {kind} concept) pair, {t.modality} rows, {t.describe()}; "
                    "grey: the no-association null (expected counts); red: the selectivity threshold.",
                    histogram(
                        edges,
                        counts,
                        title=f"{t.modality}: {kind} ({t.unit_name})",
                        xlabel="AUROC",
                        null=null,
                        marks=[(t.threshold, f"{number(t.threshold)}")],
                        log=True,
                    ),
                )
            )
    return out


def all_figures(run: RunDir, tables: list[ScoreTable]) -> list[Figure]:
    return [*trace_figures(run), *attribution_figures(run), *auroc_figures(tables)]


def by_section(figs: list[Figure]) -> dict[str, list[Figure]]:
    out: dict[str, list[Figure]] = {}
    for f in figs:
        out.setdefault(f.section, []).append(f)
    return out
