"""The ground-truth section's bound-relation table and the demo's printout of it, from a
score result carrying ``ground_truth.bound_relations`` (vlmfast.scoring.relation_probe)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vlmfast.demo import format_bound_relations, format_ground_truth
from vlmfast.report.fmt import cell
from vlmfast.report.run_dir import RunDir
from vlmfast.report.sec_ground_truth import bound_table, ground_truth

FAMILY = {
    "modality": "image", "name": "color left of", "scope": "family", "n_rows": 967,
    "n_positive": 480, "accuracy": 0.841, "accuracy_ci": [0.795, 0.879], "majority": 0.51,
    "auroc": 0.93, "auroc_ci": [0.9, 0.96], "null_accuracy_mean": 0.5,
    "null_accuracy_q95": 0.559, "null_auroc_mean": 0.5, "null_auroc_q95": 0.58,
    "pvalue": 0.0099, "best_unit": 3, "best_unit_auroc": 0.58, "best_feature": 7,
    "best_feature_auroc": 0.643,
}  # fmt: skip
UNDEFINED = {"modality": "text", "name": "shape above", "scope": "family", "n_rows": 12,
             "n_positive": 5}  # fmt: skip
BOUND: dict[str, Any] = {
    "rows": {"image": "image.blocks.3.resid_post CLS rows (one per image)",
             "text": "text.blocks.2.resid_post last token rows (one per caption: EOT)"},
    "families": [FAMILY, UNDEFINED],
    "pairs": {"image": {"pairs": 86, "probed": 80, "significant": 77, "alpha": 0.05,
                        "median_accuracy": 0.8, "median_best_unit_auroc": 0.6,
                        "median_best_feature_auroc": None}},
    "unordered_identical": {"image": {"left of / right of": 1.0, "above / below": 1.0}},
}  # fmt: skip
TRUTH = {
    "concepts": {"red": {"image": {"feature": 1, "auroc": 0.99, "ci": [0.98, 1.0],
                                   "recovered": True}}},
    "target_auroc": 0.95, "planted": ["red"],
    "image": {"recovered": 1, "of": 1, "fraction": 1.0},
    "bound_relations": BOUND,
}  # fmt: skip


def test_bound_table_rows_and_note():
    t = bound_table(BOUND)
    assert t["id"] == "gt_bound"
    first, second = t["rows"]
    assert first["family"] == "color left of" and first["n"] == 967
    assert cell(first["accuracy"]) == "0.841 [0.795, 0.879]"
    assert first["unit"] == 0.58 and first["feature"] == 0.643
    assert cell(second["accuracy"]) == "n/a" and second["unit"] is None  # undefined, not 0
    assert "identical on 100.0% of samples" in t["note"]
    assert "different columns / rows" in t["note"]
    assert "77 of 80 probed pairs (of 86)" in t["note"]


def test_section_shows_bound_relations_when_present(tmp_path: Path):
    (tmp_path / "score").mkdir()
    (tmp_path / "score" / "manifest.json").write_text("{}")
    (tmp_path / "score" / "result.json").write_text(json.dumps({"ground_truth": TRUTH}))
    sec = ground_truth(RunDir.open(tmp_path))
    assert [t["id"] for t in sec["tables"]] == ["gt_summary", "gt_units", "gt_bound"]
    no_bound = {k: v for k, v in TRUTH.items() if k != "bound_relations"}
    (tmp_path / "score" / "result.json").write_text(json.dumps({"ground_truth": no_bound}))
    sec = ground_truth(RunDir.open(tmp_path))
    assert [t["id"] for t in sec["tables"]] == ["gt_summary", "gt_units"]


def test_demo_prints_bound_relations():
    text = format_ground_truth(TRUTH)
    assert "bound relations (which object is where)" in text
    line = next(x for x in text.splitlines() if "color left of" in x)
    assert "0.841" in line and "[0.795, 0.879]" in line and "0.580" in line and "0.643" in line
    undefined = next(x for x in format_bound_relations(BOUND).splitlines() if "shape above" in x)
    assert undefined.split()[-1] == "n/a" and "0.000" not in undefined
    assert "image rows: image.blocks.3.resid_post CLS rows" in text
    assert "unordered left of / right of identical on 100.0%" in text
    assert "77 of 80 probed single pairs" in text


def test_both_documents_show_the_bound_table(tmp_path: Path):
    from vlmfast.report.build import build_report

    run = tmp_path / "run"
    (run / "score").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"config": {}, "config_hash": "x", "stages": []}))
    (run / "score" / "manifest.json").write_text("{}")
    result = {"modalities": {}, "neurons": {}, "ground_truth": TRUTH}
    (run / "score" / "result.json").write_text(json.dumps(result))
    paths = build_report(run)
    md, html = paths["markdown"].read_text(), paths["html"].read_text()
    for text in ("Bound relations: probe vs best single unit", "0.841 [0.795, 0.879]",
                 "best SAE feature AUROC", "identical on 100.0% of samples"):  # fmt: skip
        assert text in md and text in html, text


def test_unavailable_bound_relations_say_why():
    why = "the store has no bound relation labels (...): re-cache it"
    t = bound_table({"unavailable": why})
    assert t["rows"] == [] and t["note"] == f"Bound relations not measured: {why}."
    assert format_bound_relations({"unavailable": why}).endswith(f"not measured: {why}")
