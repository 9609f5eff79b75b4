"""Sections from the intervene stage: ablation (retrieval, zero-shot) and steering (cosine)."""

from __future__ import annotations

from typing import Any

from vlmfast.report.fmt import interval
from vlmfast.report.model import col, not_run, section, table
from vlmfast.report.paper_claims import claim
from vlmfast.report.run_dir import RunDir

TITLE = "Concept interventions"


def _units(r: dict[str, Any]) -> str:
    units = (r.get("units") or {}).get("units") or []
    hooks = sorted({u.get("hook", "?") for u in units})
    kinds = sorted({str(u.get("kind") or "unit") for u in units})
    what = "/".join("SAE feature" if k == "feature" else k for k in kinds)
    return f"{len(units)} {what}{'s' if len(units) != 1 else ''} of {', '.join(hooks)}"


def _null(r: dict[str, Any], m: str) -> Any:
    n = r.get("null")
    if not n:
        return None
    return interval(n["mean"][m], n["low"][m], n["high"][m])


def _p(r: dict[str, Any], m: str) -> Any:
    n = r.get("null") or {}
    return (n.get("pvalue") or {}).get(m)


def _row(concept: str, r: dict[str, Any], m: str, paper: str) -> dict[str, Any]:
    return {
        "concept": concept,
        "units": _units(r),
        "metric": m,
        "clean": r["target"]["clean"][m],
        "target": r["target"]["delta"][m],
        "others": r["others"]["mean"][m],
        "overall": r["overall"]["delta"][m],
        "null": _null(r, m),
        "p": _p(r, m),
        "targeted": r.get("verdict", {}).get("targeted"),
        "paper": paper,
    }


COLUMNS = [
    col("concept", "concept", "text"),
    col("units", "units", "text"),
    col("metric", "metric", "text"),
    col("clean", "clean", "num"),
    col("target", "target change", "delta"),
    col("others", "others' mean change", "delta"),
    col("overall", "overall change", "delta"),
    col("null", "null change [interval]", "delta"),
    col("p", "p", "p"),
    col("targeted", "targeted", "text"),
    col("paper", "paper's claim", "text"),
]


def interventions(run: RunDir) -> dict[str, Any]:
    res = run.result("intervene")
    if res is None:
        return not_run("interventions", TITLE, run.why_missing("intervene"))
    tables = []
    ablate = res.get("ablate") or {}
    if ablate:
        rows = []
        for concept in sorted(ablate):
            r = ablate[concept]
            rows.append(_row(concept, r, "i2t@1", claim("ablate.retrieval")))
            rows.append(_row(concept, r, "zero_shot", claim("ablate.targeted")))
        mode = next(iter(ablate.values())).get("ablation")
        tables.append(
            table(
                "ablate",
                f"Ablating concept units ({mode} ablation): retrieval and zero-shot",
                COLUMNS,
                rows,
                "i2t@1: image-to-text retrieval accuracy at rank 1 over the eval images "
                "showing the concept; zero_shot: zero-shot accuracy among concepts of the "
                "same kind. Null: random unit sets of the same size and hook mix. "
                "Targeted: the target's change beats the null (p < 0.05) and the others' mean "
                "on the primary metric (the zero-shot margin).",
            )
        )
    steer = res.get("steer") or {}
    if steer:
        rows = [_row(c, steer[c], "cosine", claim("steer.cosine")) for c in sorted(steer)]
        alphas = sorted({str(r.get("alpha")) for r in steer.values()})
        tables.append(
            table(
                "steer",
                f"Steering concept units (alpha {', '.join(alphas)}): cosine, target vs others",
                COLUMNS,
                rows,
                "Cosine between the eval images and their own captions; others: the mean "
                "over the other concepts of the kind.",
            )
        )
    if not tables:
        return not_run("interventions", TITLE, "not run: the intervene stage wrote no results")
    return section("interventions", TITLE, tables)
