"""The real stages on a reduced demo config: the run directory contract, skip on rerun,
and a run killed inside a real stage finishing with the same results."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from vlmfast.pipeline import PipelineConfig, StageContext, demo_config, run_pipeline
from vlmfast.pipeline.stages import STAGES

SMALL = ["cache", "train-sae", "score", "trace", "attribute", "intervene", "report"]


def small_config() -> PipelineConfig:
    """The bundled demo config, shrunk to seconds (every stage but circuit: the report
    runs without it; tests/pipeline/test_circuit_stage.py runs that one)."""
    cfg = demo_config()
    cfg.run.progress = False
    cfg.run.stages = list(SMALL)
    cfg.data.spec = "synthetic:n=120,seed=11"
    cfg.quality.eval_samples = 40
    cfg.sae.n_latents, cfg.sae.k, cfg.sae.steps, cfg.sae.batch_size = 64, 4, 15, 128
    cfg.trace.data, cfg.trace.pairs, cfg.trace.samples = "synthetic:n=2,seed=12", 2, 2
    cfg.trace.kinds = ["resid", "mlp_out"]
    cfg.attribute.data, cfg.attribute.pairs = "synthetic:n=4,seed=12", 4
    cfg.concepts.intervene = ["red"]
    cfg.intervene.n, cfg.intervene.null, cfg.intervene.modes = 3, 2, ["ablate", "steer"]
    cfg.intervene.eval_data = "synthetic:test:32"
    return cfg


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run")
    res = run_pipeline(small_config(), out, log=lambda _: None)
    assert [s.status for s in res.stages if s.name in SMALL] == ["ran"] * len(SMALL)
    return out


def _json(path: Path) -> Any:
    return json.loads(path.read_text())


def test_the_run_directory_follows_the_contract(run_dir: Path) -> None:
    info = _json(run_dir / "run.json")
    assert info["config"]["data"]["spec"] == "synthetic:n=120,seed=11"
    assert [s["name"] for s in info["stages"]] == list(STAGES)
    assert {s["name"]: s["status"] for s in info["stages"]}["circuit"] == "skipped"
    for name in SMALL:
        manifest = _json(run_dir / name / "manifest.json")
        assert manifest["stage"] == name and "result.json" in manifest["outputs"]
        assert all((run_dir / name / p).exists() for p in manifest["outputs"])
    cache = _json(run_dir / "cache" / "result.json")
    assert (run_dir / "cache" / "store.zarr").is_dir()
    assert cache["hooks"]["image.blocks.3.resid_post"]["rows"] == 120 * 17  # CLS + 16 patches
    assert 0.0 <= cache["quality"]["summary"]["zero_shot_color"] <= 1.0
    for mod in ("image", "text"):
        assert (run_dir / "train-sae" / mod / "cfg.json").is_file()
    sae = _json(run_dir / "train-sae" / "result.json")
    assert 0.0 <= sae["image"]["metrics"]["window_fvu"] < 1.5
    score = _json(run_dir / "score" / "result.json")
    assert set(score["modalities"]) == {"image", "text"}
    assert score["modalities"]["image"]["rows"] == 120  # one value per sample, not per token
    assert {"object", "color", "relation"} <= set(score["modalities"]["text"]["by_kind"])
    assert (run_dir / "score" / "image" / "scores.zarr").is_dir()
    truth = score["ground_truth"]
    assert truth["image"]["of"] == 14 and set(truth["concepts"]) >= {"red", "circle"}
    assert score["paper_claims"]["object"] == 1842 and "claim" in score["paper_claims"]["label"]
    trace = _json(run_dir / "trace" / "result.json")
    assert set(trace) == {"image", "text"}
    loc = trace["image"]["localization"]["kinds"]["resid"]
    assert (
        len(loc["profile"]) == 4
        and loc["layer_range"][0] <= loc["peak_layer"] <= loc["layer_range"][1]
    )
    att = _json(run_dir / "attribute" / "result.json")
    grid = att["exact_heads"]["image/heads"]["effect"]
    assert len(grid) == 4 and all(len(row) == 4 for row in grid)
    assert any(abs(v) > 0 for row in grid for v in row), "patching every head changed nothing"
    assert (run_dir / "attribute" / "attribution.parquet").is_file()
    iv = _json(run_dir / "intervene" / "result.json")
    assert set(iv["ablate"]) == {"red"} and set(iv["steer"]) == {"red"}
    report = _json(run_dir / "report" / "result.json")["files"]
    assert (run_dir / report["html"]).is_file() and report["html"] == "report/report.html"


def test_rerun_skips_every_stage(run_dir: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("result.json")}
    res = run_pipeline(small_config(), run_dir, log=lambda _: None)
    assert all(s.status == "skipped" for s in res.stages)
    assert {p: p.stat().st_mtime_ns for p in before} == before


def test_a_run_killed_in_score_finishes_with_the_same_results(run_dir: Path) -> None:
    expected = {n: (run_dir / n / "result.json").read_text() for n in SMALL}

    def killed(ctx: StageContext) -> dict[str, Any]:
        STAGES["score"].fn(ctx)  # every file written, then killed before the manifest
        raise KeyboardInterrupt

    reg = dict(STAGES)
    reg["score"] = dataclasses.replace(STAGES["score"], fn=killed)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(small_config(), run_dir, force=["score"], log=lambda _: None, registry=reg)
    assert not (run_dir / "score" / "manifest.json").exists()
    res = run_pipeline(small_config(), run_dir, log=lambda _: None)
    status = {s.name: s.status for s in res.stages}
    assert status["score"] == status["intervene"] == "ran"
    assert status["cache"] == status["train-sae"] == status["trace"] == "skipped"
    for name in SMALL:
        assert (run_dir / name / "result.json").read_text() == expected[name], name
