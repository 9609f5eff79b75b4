"""The report of a real ``vlmfast run`` directory (the pipeline's report stage calls it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _config() -> object:
    from vlmfast.pipeline import demo_config

    cfg = demo_config()
    cfg.run.progress = False
    cfg.data.spec = "synthetic:n=120,seed=11"
    cfg.quality.eval_samples = 40
    cfg.sae.n_latents, cfg.sae.k, cfg.sae.steps, cfg.sae.batch_size = 64, 4, 15, 128
    cfg.trace.data, cfg.trace.pairs, cfg.trace.samples = "synthetic:n=2,seed=12", 2, 2
    cfg.trace.kinds = ["resid", "heads"]
    cfg.trace.null = 20
    cfg.attribute.data, cfg.attribute.pairs = "synthetic:n=4,seed=12", 4
    cfg.concepts.circuit = ["red"]
    cfg.circuit.pairs, cfg.circuit.data = 4, "synthetic:n=200,seed=13"
    cfg.circuit.components, cfg.circuit.null = ["heads"], 20
    cfg.concepts.intervene = ["red"]
    cfg.intervene.n, cfg.intervene.null, cfg.intervene.modes = 3, 20, ["ablate", "steer"]
    cfg.intervene.eval_data = "synthetic:test:32"
    cm = cfg.crossmodal
    cm.n_latents, cm.k, cm.steps, cm.n_null, cm.n_boot = 32, 4, 40, 5, 20
    cm.grounding_images, cm.grounding_heads, cm.fusion_pairs, cm.fusion_units = 6, 1, 48, 2
    return cfg


def test_pipeline_run_reports_every_stage(tmp_path: Path) -> None:
    from vlmfast.pipeline import run_pipeline
    from vlmfast.report import build_report
    from vlmfast.report.fmt import cell

    res = run_pipeline(_config(), tmp_path / "run", log=lambda _: None)  # type: ignore[arg-type]
    statuses = {s.name: s.status for s in res.stages}
    assert statuses.get("report") == "ran", statuses
    out = tmp_path / "run" / "report"
    results = json.loads((out / "results.json").read_text())
    sec = {s["id"]: s for s in results["sections"]}
    for sid in (
        "quality",
        "selectivity",
        "tracing",
        "heads",
        "circuits",
        "interventions",
        "crossmodal",
    ):
        assert sec[sid]["status"] == "ran", (sid, sec[sid]["note"])
    assert sec["dashboards"]["status"] == "ran" and sec["ground_truth"]["status"] == "ran"
    html = (out / "report.html").read_text()
    md = (out / "report.md").read_text()
    for s in results["sections"]:
        for t in s["tables"]:
            for row in t["rows"]:
                for c in t["columns"]:
                    text = cell(row[c["key"]], c["style"])
                    assert text in md.replace("\\|", "|")
    assert "circuit for red" in html
    # rebuilding from the finished run gives the same bytes as the report stage wrote
    again = build_report(tmp_path / "run", tmp_path / "again")
    # run.json now lists the report stage itself, so only the stage table may differ
    assert again["markdown"].read_text().split("## ", 1)[1] == md.split("## ", 1)[1]
