"""``results.json``: every table the report shows, collected from a run directory.

The HTML and Markdown documents are renderings of this one object (with the figures
and dashboards, which the documents draw from the stage files beside it).
"""

from __future__ import annotations

import json
from typing import Any

from vlmfast.report.model import col, section, table
from vlmfast.report.run_dir import STAGES, RunDir
from vlmfast.report.sec_causal import heads, tracing
from vlmfast.report.sec_circuits import circuits
from vlmfast.report.sec_crossmodal import crossmodal
from vlmfast.report.sec_ground_truth import ground_truth
from vlmfast.report.sec_interventions import interventions
from vlmfast.report.sec_quality import quality
from vlmfast.report.sec_sae_eval import sae_eval
from vlmfast.report.sec_scores import selectivity

SCHEMA_VERSION = 1


def header(run: RunDir) -> dict[str, Any]:
    info = run.run
    cfg = info.get("config") or {}
    title = ((cfg.get("report") or {}).get("title")) if isinstance(cfg, dict) else None
    facts = [
        {"field": "run", "value": run.path.name},
        {"field": "config hash", "value": info.get("config_hash") or "n/a (no run.json)"},
    ]
    versions = [
        {"package": k, "version": str(v)} for k, v in sorted((info.get("versions") or {}).items())
    ]
    stages = _stage_rows(run, info)
    return section(
        "header",
        title or "vlmfast run report",
        [
            table("run", "Run", [col("field", "", "text"), col("value", "", "text")], facts),
            table(
                "stages",
                "Stages",
                [
                    col("stage", "stage", "text"),
                    col("status", "status", "text"),
                    col("reason", "reason", "text"),
                    col("seconds", "time", "sec"),
                    col("cache_hit", "cache hit", "text"),
                ],
                stages,
                "A cache hit is a stage skipped because its key matched a finished stage.",
            ),
            table(
                "versions",
                "Versions",
                [col("package", "package", "text"), col("version", "version", "text")],
                versions,
            ),
        ],
    )


def _stage_rows(run: RunDir, info: dict[str, Any]) -> list[dict[str, Any]]:
    """Each stage's status from run.json (a skipped stage whose result is there: a cache
    hit), then finished stages run.json does not list."""
    stages = []
    recorded = {s.get("name"): s for s in info.get("stages") or []}
    names = [s for s in STAGES if s in recorded] + sorted(n for n in recorded if n not in STAGES)
    for name in names:
        s = recorded[name]
        hit = s.get("status") == "skipped" and run.done(str(name))
        stages.append(
            {
                "stage": name,
                "status": "cached" if hit else s.get("status"),
                "reason": s.get("reason") or "",
                "seconds": s.get("seconds"),
                "cache_hit": hit,
            }
        )
    for name in STAGES:  # finished stages run.json does not list (e.g. built by hand)
        if name not in recorded and run.done(name):
            stages.append(
                {
                    "stage": name,
                    "status": "present",
                    "reason": "not in run.json",
                    "seconds": None,
                    "cache_hit": False,
                }
            )
    return stages


def dashboards_section(feats: list[Any]) -> dict[str, Any]:
    from vlmfast.report.model import not_run

    if not feats:
        return not_run(
            "dashboards", "Feature dashboards", "not run: no SAE feature scores in this run"
        )
    rows = [
        {
            "modality": f.table.modality,
            "feature": f.index,
            "concept": f.concept,
            "auroc": f.auroc,
            "density": 100.0 * f.density,
            "inline": f.inline,
            "page": f.page,
        }
        for f in feats
    ]
    return section(
        "dashboards",
        "Feature dashboards",
        [
            table(
                "features",
                "Dashboard features",
                [
                    col("modality", "modality", "text"),
                    col("feature", "feature", "int"),
                    col("concept", "best concept", "text"),
                    col("auroc", "AUROC [95% CI]", "num"),
                    col("density", "density", "pct"),
                    col("inline", "shown here", "text"),
                    col("page", "page", "text"),
                ],
                rows,
                "Density: share of samples on which the feature fires. Each feature's best "
                "concept is its highest-AUROC concept.",
            )
        ],
    )


def provenance(run: RunDir) -> dict[str, Any]:
    cfg = run.run.get("config")
    text = json.dumps(cfg, indent=1, sort_keys=True) if cfg else "no run.json"
    s = section("provenance", "Provenance")
    s["config"] = text
    return s


def collect(run: RunDir, feats: list[Any]) -> dict[str, Any]:
    """The whole results object (strict JSON: no NaN)."""
    sections = [
        header(run),
        quality(run),
        sae_eval(run),
        selectivity(run),
        tracing(run),
        heads(run),
        circuits(run),
        interventions(run),
        crossmodal(run),
        dashboards_section(feats),
        ground_truth(run),
        provenance(run),
    ]
    return {"schema_version": SCHEMA_VERSION, "sections": sections}


def dumps(results: dict[str, Any]) -> str:
    return json.dumps(results, indent=1, sort_keys=True, allow_nan=False) + "\n"
