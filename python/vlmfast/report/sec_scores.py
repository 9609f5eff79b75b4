"""The selectivity section (score stage): selective units per kind, polysemanticity,
modality invariance. Ground truth is in ``sec_ground_truth``."""

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
        rows += _selective_rows(key, mod, e, t, what)
        poly_rows.append(_polysemantic_row(key, mod, e, t, what))
    poly_rows.append(_invariant_row(invariant))
    poly_note = POLY_NOTE + (
        f" The score stage: {inv_note}." if inv_note and invariant is None else ""
    )
    return section(
        "selectivity",
        TITLE,
        [_selective_table(rows), _polysemantic_table(poly_rows, poly_note)],
    )


def _selective_rows(
    key: str, mod: str, e: dict[str, Any], t: ScoreTable | None, what: str
) -> list[dict[str, Any]]:
    """One summary entry's selective units per concept kind, with each kind's null."""
    rows = []
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
    return rows


def _polysemantic_row(
    key: str, mod: str, e: dict[str, Any], t: ScoreTable | None, what: str
) -> dict[str, Any]:
    """One summary entry's share of polysemantic units, with its permutation null."""
    p = e.get("polysemantic") or {}
    lo_hi = p.get("percent_ci") or [None, None]
    pn = polysemantic_null(t) if t is not None else (None, None, None)
    return {
        "modality": mod,
        "units": what,
        "selective": (e.get("selective_units") or {}).get("count"),
        "measure": "polysemantic",
        "percent": interval(p.get("percent"), lo_hi[0], lo_hi[1]),
        "null": interval(*pn),
        "paper": claim("polysemantic") if key == "sae" else claim("polysemantic.units"),
    }


def _invariant_row(inv: Any) -> dict[str, Any]:
    """The modality-invariant share of shared units (an empty row when none was scored)."""
    if isinstance(inv, dict) and "percent" in inv:
        ci = inv.get("percent_ci") or [None, None]
        return {
            "modality": "image+text",
            "units": "shared units",
            "selective": inv.get("of_selective_units"),
            "measure": "modality-invariant",
            "percent": interval(inv["percent"], ci[0], ci[1]),
            "null": inv.get("null"),
            "paper": claim("invariant"),
        }
    return {
        "modality": "image+text",
        "units": "",
        "selective": None,
        "measure": "modality-invariant",
        "percent": None,
        "null": None,
        "paper": claim("invariant"),
    }


SEL_NOTE = (
    "Selective: AUROC >= threshold and Benjamini-Hochberg significant over all tests of "
    "the modality; interval = units whose AUROC CI lower / upper bound clears the "
    "threshold. Null: expected count if no unit carried any concept of the kind "
    "(Mann-Whitney normal approximation per concept). The paper's figures are its "
    "claims for its models and data, not this run's."
)
POLY_NOTE = (
    "Percent of selective units, Wilson interval. Null: each concept's selective units "
    "reassigned to random units (100 permutations, seed 0), mean [2.5%, 97.5%]. "
    "Modality-invariant needs units scored on both modalities (a shared-space SAE or "
    "matched unit pairs); n/a when the run has none."
)


def _selective_table(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return table(
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
        SEL_NOTE,
    )


def _polysemantic_table(rows: list[dict[str, Any]], note: str) -> dict[str, Any]:
    return table(
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
        rows,
        note,
    )
