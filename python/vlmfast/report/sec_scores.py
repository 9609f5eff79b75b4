"""Sections from the score stage: selectivity, polysemanticity, invariance, ground truth."""

from __future__ import annotations

from typing import Any

import numpy as np

from vlmfast.report.fmt import interval
from vlmfast.report.model import col, not_run, section, table
from vlmfast.report.paper_claims import claim
from vlmfast.report.run_dir import RunDir
from vlmfast.report.score_tables import (
    ScoreTable,
    expected_null_count,
    load_tables,
    polysemantic_null,
)

TITLE = "Concept selectivity"
GT_TITLE = "Ground truth (synthetic benchmark)"


def score_tables(run: RunDir) -> list[ScoreTable]:
    out: list[ScoreTable] = []
    for p in run.score_tables():
        out.extend(load_tables(p))
    return out


def _entries(res: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """``(source, modality, summary entry)`` of score/result.json: ``modalities`` holds the
    SAE features per modality, ``neurons`` per hook per modality (or a plain summary)."""
    out = []
    for mod in sorted(res.get("modalities") or {}):
        entry = res["modalities"][mod]
        if isinstance(entry, dict) and "by_kind" in entry:
            out.append(("sae", mod, entry))
    neurons = res.get("neurons") or {}
    if isinstance(neurons, dict) and "modalities" in neurons:
        neurons = {"": neurons["modalities"]}
    for hook in sorted(neurons):
        block = neurons[hook]
        if isinstance(block, dict) and "by_kind" in block:  # {mod: entry} at the top
            block = {hook: block}
        for mod in sorted(block or {}):
            entry = block[mod]
            if isinstance(entry, dict) and "by_kind" in entry:
                out.append(("units", mod, entry))
    return out


def _match(
    run: RunDir, tables: list[ScoreTable], source: str, mod: str, entry: dict[str, Any]
) -> ScoreTable | None:
    """The per-unit table behind a summary entry: its ``scores`` folder, else by kind."""
    rel = entry.get("scores")
    if isinstance(rel, str):
        want = (run.stage_dir("score") / rel / "scores.zarr").resolve()
        for t in tables:
            if t.path.resolve() == want and t.modality == mod:
                return t
    hook = entry.get("hook")
    hits = [
        t
        for t in tables
        if t.modality == mod and t.source == source and (hook is None or t.hook == hook)
    ]
    return hits[0] if hits else None


def selectivity(run: RunDir) -> dict[str, Any]:
    res = run.result("score")
    if res is None:
        return not_run("selectivity", TITLE, run.why_missing("score"))
    tables = score_tables(run)
    rows, poly_rows = [], []
    invariant = res.get("invariant")
    inv_note = ""
    for key, mod, e in _entries(res):
        t = _match(run, tables, key, mod, e)
        hook = e.get("hook") or (t.hook if t else "?")
        what = f"SAE features of {hook}" if key == "sae" else f"units of {hook}"
        inv = e.get("invariant")
        if invariant is None and isinstance(inv, dict) and "percent" in inv:
            invariant = inv
        elif isinstance(inv, dict) and inv.get("note"):
            inv_note = str(inv["note"])
        kinds = t.kinds if t else []
        for kind in sorted(e["by_kind"]):
            k = e["by_kind"][kind]
            null = None
            if t is not None:
                null = expected_null_count(t, np.array([x == kind for x in kinds]))
            rows.append(
                {
                    "modality": mod,
                    "units": what,
                    "kind": kind,
                    "concepts": k.get("concepts"),
                    "selective": interval(k["count"], k.get("low"), k.get("high")),
                    "null": null,
                    "paper": claim(f"selective.{kind}")
                    if key == "sae" and kind in ("object", "color", "relation")
                    else "",
                }
            )
        p = e.get("polysemantic") or {}
        lo_hi = p.get("percent_ci") or [None, None]
        pn = polysemantic_null(t) if t is not None else (None, None, None)
        poly_rows.append(
            {
                "modality": mod,
                "units": what,
                "selective": (e.get("selective_units") or {}).get("count"),
                "measure": "polysemantic",
                "percent": interval(p.get("percent"), lo_hi[0], lo_hi[1]),
                "null": interval(*pn),
                "paper": claim("polysemantic") if key == "sae" else claim("polysemantic.units"),
            }
        )
    inv = invariant
    if isinstance(inv, dict) and "percent" in inv:
        ci = inv.get("percent_ci") or [None, None]
        poly_rows.append(
            {
                "modality": "image+text",
                "units": "shared units",
                "selective": inv.get("of_selective_units"),
                "measure": "modality-invariant",
                "percent": interval(inv["percent"], ci[0], ci[1]),
                "null": inv.get("null"),
                "paper": claim("invariant"),
            }
        )
    else:
        poly_rows.append(
            {
                "modality": "image+text",
                "units": "",
                "selective": None,
                "measure": "modality-invariant",
                "percent": None,
                "null": None,
                "paper": claim("invariant"),
            }
        )
    sel_note = (
        "Selective: AUROC >= threshold and Benjamini-Hochberg significant over all tests of "
        "the modality; interval = units whose AUROC CI lower / upper bound clears the "
        "threshold. Null: expected count if no unit carried any concept of the kind "
        "(Mann-Whitney normal approximation per concept). The paper's figures are its "
        "claims for its models and data, not this run's."
    )
    poly_note = (
        "Percent of selective units, Wilson interval. Null: each concept's selective units "
        "reassigned to random units (100 permutations, seed 0), mean [2.5%, 97.5%]. "
        "Modality-invariant needs units scored on both modalities (a shared-space SAE or "
        "matched unit pairs); n/a when the run has none."
        + (f" The score stage: {inv_note}." if inv_note and invariant is None else "")
    )
    return section(
        "selectivity",
        TITLE,
        [
            table(
                "selective",
                "Selective units per concept kind and modality",
                [
                    col("modality", "modality", "text"),
                    col("units", "units", "text"),
                    col("kind", "kind", "text"),
                    col("concepts", "concepts", "int"),
                    col("selective", "selective units [interval]", "int"),
                    col("null", "null (expected)", "num"),
                    col("paper", "paper's claim", "text"),
                ],
                rows,
                sel_note,
            ),
            table(
                "polysemantic",
                "Polysemantic and modality-invariant units",
                [
                    col("modality", "modality", "text"),
                    col("units", "units", "text"),
                    col("selective", "selective units", "int"),
                    col("measure", "measure", "text"),
                    col("percent", "% of selective [95% CI]", "pct"),
                    col("null", "null % [interval]", "pct"),
                    col("paper", "paper's claim", "text"),
                ],
                poly_rows,
                poly_note,
            ),
        ],
    )


def circuit_composition(run: RunDir) -> dict[str, Any] | None:
    """What each circuit is made of (towers, kinds, layers), for the ground-truth section."""
    res = run.result("circuit")
    if not res:
        return None
    rows = []
    for concept in sorted(res):
        nodes = res[concept].get("nodes") or []
        for tower in ("image", "text"):
            mine = [n for n in nodes if n.get("tower") == tower]
            layers = sorted({int(n["layer"]) for n in mine})
            rows.append(
                {
                    "concept": concept,
                    "tower": tower,
                    "nodes": len(mine),
                    "kinds": ", ".join(sorted({str(n["kind"]) for n in mine})),
                    "layers": ", ".join(str(x) for x in layers),
                }
            )
    return table(
        "gt_circuits",
        "Components of each circuit, per tower",
        [
            col("concept", "concept", "text"),
            col("tower", "tower", "text"),
            col("nodes", "nodes", "int"),
            col("kinds", "kinds", "text"),
            col("layers", "layers", "text"),
        ],
        rows,
        "The bundled model was trained, not wired by hand: the renderer's ground truth is "
        "which shapes and colors each image shows, not a circuit. These are the components "
        "the circuits used, to read against the planted concepts above.",
    )


def ground_truth(run: RunDir) -> dict[str, Any]:
    res = run.result("score")
    gt = (res or {}).get("ground_truth")
    if not gt:
        reason = (
            run.why_missing("score")
            if res is None
            else ("not run: the score stage recorded no planted ground truth (non-synthetic data)")
        )
        return not_run("ground_truth", GT_TITLE, reason)
    from vlmfast.data.synthetic import spec as sspec

    kind_of = {**{s: "shape" for s in sspec.SHAPES}, **{c: "color" for c in sspec.COLORS}}
    rel = getattr(sspec, "RELATIONS", ())
    kind_of.update({r: "relation" for r in rel})
    rows = []
    concepts = gt.get("concepts") or {}
    for name in sorted(concepts):
        for mod in sorted(concepts[name]):
            e = concepts[name][mod]
            ci = e.get("ci") or [None, None]
            rows.append(
                {
                    "concept": name,
                    "kind": kind_of.get(name, ""),
                    "modality": mod,
                    "unit": e.get("feature", e.get("unit")),
                    "auroc": interval(e.get("auroc"), ci[0], ci[1]),
                    "recovered": bool(e.get("recovered")),
                }
            )
    summary = []
    for mod in sorted(k for k in gt if isinstance(gt[k], dict) and "recovered" in gt[k]):
        s = gt[mod]
        summary.append(
            {
                "modality": mod,
                "recovered": s["recovered"],
                "of": s["of"],
                "percent": 100.0 * float(s.get("fraction", 0.0)),
                "target": gt.get("target_auroc"),
            }
        )
    return section(
        "ground_truth",
        GT_TITLE,
        [
            table(
                "gt_summary",
                "Planted concepts recovered",
                [
                    col("modality", "modality", "text"),
                    col("recovered", "recovered", "int"),
                    col("of", "planted", "int"),
                    col("percent", "share", "pct"),
                    col("target", "AUROC target", "num"),
                ],
                summary,
                "A planted concept counts as recovered when its best unit reaches the target "
                "AUROC (the best of many units: an optimistic pick).",
            ),
            table(
                "gt_units",
                "Best unit per planted concept",
                [
                    col("concept", "concept", "text"),
                    col("kind", "kind", "text"),
                    col("modality", "modality", "text"),
                    col("unit", "unit", "int"),
                    col("auroc", "AUROC [95% CI]", "num"),
                    col("recovered", "recovered", "text"),
                ],
                rows,
            ),
            *([comp] if (comp := circuit_composition(run)) is not None else []),
        ],
        note="The synthetic renderer's planted shapes and colors are exact ground truth.",
    )
