"""Sections from the trace and attribute stages: causal layer ranges, top heads."""

from __future__ import annotations

from typing import Any

import numpy as np

from vlmfast.report.fmt import interval
from vlmfast.report.model import col, not_run, section, table
from vlmfast.report.paper_claims import claim
from vlmfast.report.run_dir import RunDir

TRACE_TITLE = "Causal tracing"
HEADS_TITLE = "Head patching and attribution"
TOP_HEADS = 3


def _towers(res: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(t, res[t]) for t in ("image", "text") if isinstance(res.get(t), dict)]


def layer_range(peak: np.ndarray, frac: float = 0.5) -> tuple[int, int, int]:
    """``(lo, best, hi)`` row indices: the contiguous rows around the best whose peak is
    at least ``frac`` of the best peak."""
    best = int(np.nanargmax(peak))
    cut = frac * float(peak[best])
    lo = hi = best
    while lo > 0 and peak[lo - 1] >= cut:
        lo -= 1
    while hi < len(peak) - 1 and peak[hi + 1] >= cut:
        hi += 1
    return lo, best, hi


def _null_at(tr: dict[str, Any], kind: str, i: int, j: int) -> tuple[Any, Any]:
    null = (tr.get("null") or {}).get(kind)
    if not null:
        return None, None
    return (
        interval(null["mean"][i], null["low"][i], null["high"][i]),
        null["p_value"][i][j],
    )


def _trace_row(tower: str, tr: dict[str, Any], kind: str) -> dict[str, Any]:
    """One tower's and kind's layer range around the peak recovery."""
    layers = list(tr["layers"])
    rec = np.asarray(tr["recovery"][kind], dtype=np.float64)
    # the image's CLS is left out: restoring it late restores the output trivially
    # (the pipeline's trace localization uses the same rule)
    cols = [
        j for j, lab in enumerate(tr["labels"]) if not (tower == "image" and lab == "CLS")
    ] or list(range(rec.shape[1]))
    peak = np.nanmax(rec[:, cols], axis=1)
    lo, best, hi = layer_range(peak)
    j = cols[int(np.nanargmax(rec[best, cols]))]
    null, p = _null_at(tr, kind, best, j)
    return {
        "tower": tower,
        "kind": kind,
        "layers": f"{layers[lo]}-{layers[hi]}" if lo != hi else f"{layers[best]}",
        "traced": f"{layers[0]}-{layers[-1]}",
        "peak": float(rec[best, j]),
        "at": f"layer {layers[best]}, {tr['labels'][j]}",
        "null": null,
        "p": p,
        "paper": claim(f"layers.{tower}"),
    }


def tracing(run: RunDir) -> dict[str, Any]:
    res = run.result("trace")
    if res is None:
        return not_run("tracing", TRACE_TITLE, run.why_missing("trace"))
    rows = [
        _trace_row(tower, tr, kind)
        for tower, tr in _towers(res)
        for kind in tr["kinds"]
        if kind != "heads"
    ]
    note = (
        "Recovery = (m(restored) - m(corrupt)) / (m(clean) - m(corrupt)) on the pair's "
        "score; the range holds the layers whose best position (the image CLS left out) "
        "recovers at least half the peak. Null: random restorations of as many units at the same layer, mean "
        "[interval]; p: permutation p-value of the peak cell."
    )
    return section(
        "tracing",
        TRACE_TITLE,
        [
            table(
                "trace_layers",
                "Layer ranges with the largest causal effect",
                [
                    col("tower", "tower", "text"),
                    col("kind", "restored", "text"),
                    col("layers", "layer range", "text"),
                    col("traced", "traced layers", "text"),
                    col("peak", "peak recovery", "num"),
                    col("at", "peak at", "text"),
                    col("null", "null recovery at that layer", "num"),
                    col("p", "p", "p"),
                    col("paper", "paper's claim", "text"),
                ],
                rows,
                note,
            )
        ],
    )


def heads(run: RunDir) -> dict[str, Any]:
    tr_res, at_res = run.result("trace"), run.result("attribute")
    if tr_res is None and at_res is None:
        return not_run("heads", HEADS_TITLE, run.why_missing("trace"))
    tables = []
    if tr_res is not None:
        top = _trace_heads_table(tr_res)
        if top is not None:
            tables.append(top)
    if at_res is not None:
        tables.append(_atp_heads_table(at_res))
    exact = (at_res or {}).get("exact_heads") or {}
    if exact:
        tables.append(_exact_heads_table(exact, at_res))
    return section("heads", HEADS_TITLE, tables)


def _trace_heads_table(tr_res: dict[str, Any]) -> dict[str, Any] | None:
    """The trace's heads kind: patching recovery of the top heads (``None``: none traced)."""
    rows = []
    for tower, tr in _towers(tr_res):
        if "heads" not in tr["recovery"]:
            continue
        rec = np.asarray(tr["recovery"]["heads"], dtype=np.float64)
        for rank, (i, j) in enumerate(_top_heads(rec)):
            null, p = _null_at(tr, "heads", i, j)
            rows.append(
                {
                    "tower": tower,
                    "rank": rank + 1,
                    "head": f"L{tr['layers'][i]}.H{j}",
                    "recovery": float(rec[i, j]),
                    "null": null,
                    "p": p,
                    "paper": claim("heads.patching") if tower == "image" and rank == 0 else "",
                }
            )
    if not rows:
        return None
    return table(
        "top_heads",
        "Patching recovery of the top heads",
        [
            col("tower", "tower", "text"),
            col("rank", "rank", "int"),
            col("head", "head", "text"),
            col("recovery", "recovery", "num"),
            col("null", "null recovery [interval]", "num"),
            col("p", "p", "p"),
            col("paper", "paper's claim", "text"),
        ],
        rows,
        "Each head's output restored from the clean run into the corrupted one "
        "(the trace's heads table); null as above.",
    )


def _atp_heads_table(at_res: dict[str, Any]) -> dict[str, Any]:
    """The attribute stage's linear estimates of the top heads per tower."""
    rows = []
    total = at_res.get("total_change")
    for key in sorted(at_res.get("scores") or {}):
        tower, kind = key.split("/")
        if kind != "heads":
            continue
        s = np.asarray(at_res["scores"][key], dtype=np.float64)
        gap = (at_res.get("completeness_gap") or {}).get(tower)
        for rank, (i, j) in enumerate(_top_heads(np.abs(s))):
            rows.append(
                {
                    "tower": tower,
                    "rank": rank + 1,
                    "head": f"L{i}.H{j}",
                    "score": float(s[i, j]),
                    "share": float(s[i, j]) / total if total else None,
                    "gap": gap,
                }
            )
    return table(
        "atp_heads",
        f"Attribution ({at_res.get('method')}, {at_res.get('direction')}) of the top heads",
        [
            col("tower", "tower", "text"),
            col("rank", "rank", "int"),
            col("head", "head", "text"),
            col("score", "score change", "delta"),
            col("share", "share of clean - corrupt", "num"),
            col("gap", "tower completeness gap", "delta"),
        ],
        rows,
        "Linear estimate of each head's patching effect; the completeness gap is the "
        "sum of the input-cut scores minus the tower's real change.",
    )


def _exact_heads_table(exact: dict[str, Any], at_res: dict[str, Any] | None) -> dict[str, Any]:
    """The attribute stage's exact sweep (every head patched alone): the top heads."""
    rows = []
    comp = at_res.get("compare_exact_heads") or {} if at_res else {}
    for key in sorted(exact):
        tower = key.split("/")[0]
        eff = np.asarray(exact[key]["effect"], dtype=np.float64)
        change = (at_res.get("tower_change") or {}).get(tower) if at_res else None
        atp = (
            np.asarray((at_res.get("scores") or {}).get(key, []), dtype=np.float64)
            if at_res
            else None
        )
        for rank, (i, j) in enumerate(_top_heads(np.abs(eff))):
            rows.append(
                {
                    "tower": tower,
                    "rank": rank + 1,
                    "head": f"L{i}.H{j}",
                    "effect": float(eff[i, j]),
                    "recovery": float(eff[i, j]) / change if change else None,
                    "atp": float(atp[i, j]) if atp is not None and atp.shape == eff.shape else None,
                    "spearman": (comp.get(key) or {}).get("spearman"),
                    "paper": claim("heads.patching") if tower == "image" and rank == 0 else "",
                }
            )
    return table(
        "exact_heads",
        "Exact activation patching of every head: the top heads",
        [
            col("tower", "tower", "text"),
            col("rank", "rank", "int"),
            col("head", "head", "text"),
            col("effect", "score change", "delta"),
            col("recovery", "recovery", "num"),
            col("atp", "attribution estimate", "delta"),
            col("spearman", "Spearman atp vs exact (all heads)", "num"),
            col("paper", "paper's claim", "text"),
        ],
        rows,
        "Each head patched from the clean run into the corrupted one, one at a time "
        "(the attribute stage's exact sweep); recovery = change / the tower's "
        "clean - corrupt change. No null is drawn for this sweep (the trace stage's "
        "heads kind with a null gives one).",
    )


def _top_heads(grid: np.ndarray) -> list[tuple[int, int]]:
    """``(layer, head)`` of the ``TOP_HEADS`` largest cells of a layers x heads grid,
    largest first, ties in row-major order."""
    order = np.argsort(-grid, axis=None, kind="stable")[:TOP_HEADS]
    return [divmod(int(flat), grid.shape[1]) for flat in order.tolist()]
