"""``vlmfast demo`` runs the demo pipeline on the bundled model and reports real numbers."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from vlmfast.cli import main
from vlmfast.demo import DemoConfig, run_demo
from vlmfast.errors import InputError
from vlmfast.pipeline import STAGE_NAMES


def _result(run: Path, stage: str) -> Any:
    return json.loads((run / stage / "result.json").read_text())


@pytest.mark.slow
def test_demo_end_to_end(tmp_path: Path) -> None:
    lines: list[str] = []
    cfg = DemoConfig(out=tmp_path, n_samples=120, eval_samples=40, sae_steps=15, n_latents=64, k=4)
    summary = run_demo(cfg, log=lines.append)

    assert (tmp_path / "cache" / "store.zarr").is_dir()
    assert (tmp_path / "train-sae" / "image" / "cfg.json").is_file()
    assert (tmp_path / "train-sae" / "text" / "cfg.json").is_file()
    results = summary["results"]
    assert {"cache", "train-sae", "score", "trace", "attribute", "intervene"} <= set(results)
    assert results == {s: _result(tmp_path, s) for s in results}  # what is on disk
    for mod in ("image", "text"):
        assert 0.0 <= results["train-sae"][mod]["metrics"]["window_fvu"] < 1.5
    quality = results["cache"]["quality"]
    assert 0.0 <= quality["summary"]["zero_shot_color"] <= 1.0
    score = results["score"]
    # one scored value per sample (max over its tokens), not per token row
    assert score["modalities"]["image"]["rows"] == 120 == score["modalities"]["text"]["rows"]
    truth = score["ground_truth"]
    assert set(truth["concepts"]) >= {"red", "circle"}
    assert 0 <= truth["image"]["recovered"] <= truth["image"]["of"] == 14
    assert any("planted shapes and colors" in line for line in lines)
    assert any("paper (its claim)" in line for line in lines)  # the paper-style table
    assert any(line.startswith("run directory:") for line in lines)
    printed = "\n".join(lines)  # the cross-modal block, with the stage's two-tower circuit
    assert (
        "== cross-modal binding: invariant features, concept transfer, fusion, grounding" in printed
    )
    assert "  two-tower circuit (heads of both towers in one search, both-swap" in printed
    assert "    red (" in printed and " text nodes; faithfulness " in printed
    assert "      meet in the shared embedding: image.embed alone " in printed
    two = results["cross-modal"]["two_tower"]["circuits"]["red"]
    assert {n["tower"] for n in two["nodes"]} <= {"image", "text"}
    assert set(two["meta"]["per_tower"]) == {"image", "text"}
    import vlmfast as vf

    pair = vf.load_pair("synthetic:tiny")
    grid = results["attribute"]["exact_heads"]["image/heads"]["effect"]
    assert len(grid) == pair.config.image.layers
    assert all(len(row) == pair.config.image.heads for row in grid)
    assert any(abs(v) > 0 for row in grid for v in row), "patching every head changed nothing"
    assert any("exact head patching" in line for line in lines)
    # a second run recomputes nothing
    again = run_demo(cfg, log=lambda _: None)
    assert {s["status"] for s in again["stages"]} == {"skipped"}


def _localised(loc: dict[str, Any]) -> bool:
    """Some kind's best recovery is concentrated in a proper sub-range of the layers."""
    return any(
        k["peak_recovery"] > 0.05 and k["layer_range"][1] - k["layer_range"][0] + 1 < k["n_layers"]
        for k in loc["kinds"].values()
    )


@pytest.mark.slow
def test_default_demo_finds_what_the_model_knows(tmp_path: Path) -> None:
    """The issue's validation on the bundled model, with the default demo config:
    >= 90% of the 14 planted shapes and colors have an SAE feature with image AUROC >= 0.95
    (and >= 90% with text AUROC >= 0.95); tracing localises to a layer range on each tower;
    each concept's circuit (when find_circuit exists) recovers >= 80% of the metric."""
    summary = run_demo(DemoConfig(out=tmp_path, progress=False), log=lambda _: None)
    res = summary["results"]
    truth = res["score"]["ground_truth"]
    for mod in ("image", "text"):
        assert truth[mod]["fraction"] >= 0.9, (mod, truth[mod], truth["concepts"])
    for tower in ("image", "text"):
        loc = res["trace"][tower]["localization"]
        assert _localised(loc), (tower, loc)
    if "circuit" in res:  # find_circuit is importable
        assert set(res["circuit"]) == {"red", "circle"}
        for concept, circ in res["circuit"].items():
            check_circuit(concept, circ)


def check_circuit(concept: str, circ: dict[str, Any]) -> None:
    """A found circuit keeps >= 80% of the score (faithfulness) with a sparsity significantly
    below the random-order null's (Circuit.to_json)."""
    assert circ["faithfulness"] >= 0.8, (concept, circ["faithfulness"])
    null = circ["null"]
    assert null["pvalue"] is not None and null["pvalue"] < 0.05, (concept, null["pvalue"])
    assert circ["sparsity"] < null["sparsity_mean"], (
        concept,
        circ["sparsity"],
        null["sparsity_mean"],
    )


def test_demo_dry_run_plans_every_stage_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "--out", str(tmp_path / "run"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    planned = [line for line in out.splitlines() if line.startswith(("run ", "skip"))]
    assert [line.split()[1] for line in planned] == list(STAGE_NAMES)
    assert all("no outputs yet" in line or "not in run.stages" in line for line in planned)
    assert not (tmp_path / "run").exists()


def test_demo_rejects_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--samples", "3"]) == 1
    assert "--samples must be at least 50" in capsys.readouterr().err
    with pytest.raises(InputError):
        from vlmfast.cli.demo import run

        run(argparse.Namespace(samples=100, sae_steps=0, out=Path("x"), seed=0, no_progress=True))
