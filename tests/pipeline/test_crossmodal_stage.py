"""The cross-modal stage: its JSON on a tiny store, the report section from it, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tolerance import assert_close
from vlmfast.errors import InputError
from vlmfast.pipeline import PipelineConfig, run_pipeline
from vlmfast.pipeline.context import StageContext


def _config(data: str = "synthetic:n=80,seed=5") -> PipelineConfig:
    cfg = PipelineConfig()
    cfg.run.stages, cfg.run.progress, cfg.run.threads = ["cache", "cross-modal"], False, 1
    cfg.data.spec = data
    cfg.hooks.image, cfg.hooks.text, cfg.hooks.neurons = "", "", []
    cfg.hooks.extra = ["image.embed", "text.embed"]
    cfg.quality.enabled = False
    cm = cfg.crossmodal
    cm.n_latents, cm.k, cm.steps, cm.n_null, cm.n_boot = 32, 4, 40, 5, 20
    cm.thresholds, cm.grounding_images, cm.grounding_heads = [0.6, 0.9, 1.0], 6, 1
    cm.fusion_pairs, cm.fusion_units = 48, 2
    cm.two_tower_concepts, cm.two_tower_pairs, cm.two_tower_null = ["red"], 4, 20
    cm.two_tower_grid = 8
    return cfg


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("xm") / "run"
    run_pipeline(_config(), run, log=lambda _: None)
    return run


def test_stage_writes_every_level_with_nulls_and_intervals(run_dir: Path) -> None:
    res = json.loads((run_dir / "cross-modal" / "result.json").read_text())
    assert res["hooks"] == {"image": "image.embed", "text": "text.embed"}
    assert res["n_pairs"] == 80 and "red" in res["concepts"]
    tr = res["transfer"]
    assert len(tr["image_to_text"]["auroc"]) == len(res["concepts"]) == len(tr["concepts"])
    assert tr["n_null"] == 5
    for setting in ("gap_kept", "gap_removed"):
        entry = res["shared"][setting]
        d = entry["all"]
        assert d["gap_removed"] is (setting == "gap_removed") and d["n_features"] == 32
        points = d["invariant"]["points"]
        assert [p["threshold"] for p in points] == [0.6, 0.9, 1.0]
        for p in points:  # a 0 denominator is undefined, never 0
            if p["n_selective_either"] == 0:
                assert p["fraction"] is None and p["reason"]
            else:
                assert p["fraction"] is not None and p["ci_low"] <= p["fraction"] <= p["ci_high"]
        assert sum(d["split"]["counts"].values()) == 32
        assert "single_object" in entry  # analysed, or skipped with a reason
    fu = res["fusion"]  # object/color pairs tested, or each concept's reason for none
    assert fu["pairs"] or fu["skipped"]
    for p in fu["pairs"]:
        assert p["image"]["ci_low"] <= p["image"]["specificity"] <= p["image"]["ci_high"]
    g = res["grounding"]
    assert g["rank_by"] == "other_objects" and g["table"] and g["patching"]["heads"]
    assert (run_dir / "cross-modal" / g["maps"][0]["png"]).is_file()


def test_stage_finds_a_two_tower_circuit_over_both_towers(run_dir: Path) -> None:
    import vlmfast as vf

    res = json.loads((run_dir / "cross-modal" / "result.json").read_text())
    red = res["two_tower"]["circuits"]["red"]
    cfg = vf.load_pair("synthetic:tiny").config
    per = red["meta"]["per_tower"]
    for t in ("image", "text"):  # every head of both towers was a candidate
        assert per[t]["candidates"] == cfg.tower(t).layers * cfg.tower(t).heads
    assert red["n_nodes"] == per["image"]["candidates"] + per["text"]["candidates"]
    towers = [n["tower"] for n in red["nodes"]]
    assert {"image", "text"} <= set(towers) and {n["kind"] for n in red["nodes"]} == {"heads"}
    assert [per[t]["circuit"] for t in ("image", "text")] == [
        towers.count("image"),
        towers.count("text"),
    ]
    lo, hi = red["faithfulness_interval"]
    assert lo <= red["faithfulness"] <= hi
    assert red["null"]["size"] == 20 and 0 < red["null"]["pvalue"] <= 1
    run = red["meta"]["run"]
    assert run["corrupt"] == "both-swap" and run["pairs"] == 4
    meet = red["meta"]["meeting"]  # where the towers meet: exact parts sum to the total
    assert_close(
        meet["total"], meet["exact"]["image"] + meet["exact"]["text"] + meet["interaction"]
    )
    svg = (run_dir / "cross-modal" / run["drawing"]).read_text()
    assert "image tower" in svg and "text tower" in svg


def test_two_tower_defaults_to_the_first_circuit_concept_and_empty_is_off() -> None:
    from vlmfast.pipeline.stages.crossmodal_circuit import two_tower_concepts

    cfg = PipelineConfig()
    cfg.concepts.circuit = ["red", "circle"]
    assert two_tower_concepts(cfg) == ["red"]
    cfg.crossmodal.two_tower_concepts = []
    assert two_tower_concepts(cfg) == []


def test_report_section_renders_from_the_stage(run_dir: Path, tmp_path: Path) -> None:
    from vlmfast.report import build_report
    from vlmfast.report.fmt import cell

    paths = build_report(run_dir, tmp_path / "report")
    results = json.loads(paths["results"].read_text())
    sec = next(s for s in results["sections"] if s["id"] == "crossmodal")
    assert sec["status"] == "ran" and sec["title"] == "Cross-modal binding"
    ids = [t["id"] for t in sec["tables"]]
    for tid in ("invariant_paper", "invariant_curve", "transfer", "split", "bimodal"):
        assert tid in ids
    assert {"grounding_heads", "grounding_patching", "fusion"} <= set(ids)
    html = paths["html"].read_text()
    md = paths["markdown"].read_text().replace("\\|", "|")
    for t in sec["tables"]:
        for row in t["rows"]:
            for c in t["columns"]:
                assert cell(row[c["key"]], c["style"]) in md
    assert 'id="s-crossmodal"' in html and "modality split" in html
    assert "14%" in html and "62%" in html  # the paper's claims, beside ours
    two = next(t for t in sec["tables"] if t["id"] == "two_tower")["rows"]
    assert [(r["concept"], r["stage"]) for r in two] == [("red", "cross-modal")]
    assert "Two-tower circuit for red (cross-modal stage)" in html and "image tower" in html
    curve = next(t for t in sec["tables"] if t["id"] == "invariant_curve")
    for row in curve["rows"]:
        if row["reason"]:
            assert cell(row["fraction"], "pct") == "undefined"


def test_store_with_one_tower_names_the_missing_hook(tmp_path: Path) -> None:
    cfg = _config("synthetic:n=12,seed=1")
    cfg.hooks.extra = ["image.embed"]
    with pytest.raises(InputError, match=r"'text\.embed'.*\[hooks\]\.extra"):
        run_pipeline(cfg, tmp_path / "run", log=lambda _: None)


def _folder(tmp_path: Path) -> Path:
    from PIL import Image

    folder = tmp_path / "pics"
    folder.mkdir()
    for i, text in enumerate(["a red circle", "a blue square"]):
        Image.new("RGB", (32, 32), (200, 10 * i, 0)).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(text)
    return folder


def test_grounding_without_boxes_skips_or_errors(tmp_path: Path) -> None:
    from vlmfast.pipeline.stages.crossmodal_grounding import grounding

    folder = _folder(tmp_path)
    cfg = _config(str(folder))
    lines: list[str] = []
    ctx = StageContext("cross-modal", cfg, tmp_path, tmp_path, lines.append, progress=False)
    out = grounding(ctx)  # [data] without boxes: skipped, the reason names the source
    assert str(folder) in out["skipped"] and any("grounding skipped" in x for x in lines)
    cfg.crossmodal.grounding_data = str(folder)  # asked for by name: an error
    with pytest.raises(InputError, match=r"grounding_data.*no object boxes"):
        grounding(ctx)


def test_demo_text_prints_every_table(run_dir: Path) -> None:
    from vlmfast.pipeline.stages.crossmodal_text import format_crossmodal, format_two_tower

    res = json.loads((run_dir / "cross-modal" / "result.json").read_text())
    text = format_crossmodal(res)
    assert text.count("invariant features at AUROC >= 0.9") >= 2  # gap kept and removed
    assert "14%" in text and "62%" in text and "fusion" in text
    assert "image->text" in text and "patching L" in text
    assert "none in this run" in format_two_tower({})
    assert "two-tower circuit (heads of both towers" in text
    assert "    red (4 pairs, 28 candidates): " in text and "meet in the shared embedding" in text


def test_two_tower_on_a_source_without_scenes_is_skipped_with_the_reason(tmp_path: Path) -> None:
    from PIL import Image

    from vlmfast.pipeline.stages.crossmodal_circuit import two_tower_circuits
    from vlmfast.pipeline.stages.crossmodal_text import format_stage_two_tower

    folder = tmp_path / "pics"
    folder.mkdir()
    for i, text in enumerate(["a red circle", "a red square"]):
        Image.new("RGB", (32, 32), (200, 10 * i, 0)).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(text)
    cfg = _config(str(folder))
    ctx = StageContext("cross-modal", cfg, tmp_path, tmp_path, lambda _: None, progress=False)
    out = two_tower_circuits(ctx)  # the image swap needs synthetic scenes: red is skipped
    assert out["circuits"] == {} and "synthetic" in out["skipped"]
    assert "two-tower circuit: skipped (red: " in format_stage_two_tower({"two_tower": out})
