"""The SAE evaluation section and the dashboards' suite line, from a fixture eval.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vlmfast.report.fmt import cell
from vlmfast.report.run_dir import RunDir
from vlmfast.report.sec_sae_eval import sae_eval, suite_line, with_suite
from vlmfast.sae import SuiteReport, TopKSAE
from vlmfast.sae.downstream import DownstreamMetrics
from vlmfast.sae.evaluation import evaluate_batches
from vlmfast.sae.pair_metrics import Estimate


def _suite() -> dict:
    """A suite JSON as evaluate_suite writes it (reconstruction real, downstream fixed)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 8, generator=g)
    labels = np.where(np.arange(300) % 5 == 0, "cls", "patch")
    rec = evaluate_batches(TopKSAE(8, 32, 4), [(x, labels)])
    e = Estimate
    down = DownstreamMetrics(
        hook="image.blocks.0.resid_post", n_pairs=64, loss="softmax", logit_scale=35.2,
        logit_bias=None, temperature_free=False, positions={"image.blocks.0.resid_post": "all"},
        loss_clean=e(0.5, (0.4, 0.6)), loss_spliced=e(0.8, (0.7, 0.9)),
        loss_mean_ablated=e(2.0, (1.8, 2.2)), loss_recovered=e(None, None),
        kl_spliced=e(0.12, (0.1, 0.15)), kl_mean_ablated=e(1.5, (1.3, 1.7)),
        accuracy_clean=e(0.9, (0.8, 0.97)), accuracy_spliced=e(0.8, (0.7, 0.9)),
        accuracy_mean_ablated=e(0.1, (0.03, 0.2)),
    )  # fmt: skip
    report = SuiteReport("image.blocks.0.resid_post", {"d_in": 8, "n_latents": 32, "k": 4},
                         {"rows": "all"}, rec, down)  # fmt: skip
    out = report.to_dict()
    out["split"] = "train"
    return out


@pytest.fixture
def run(tmp_path: Path) -> RunDir:
    stage = tmp_path / "run" / "train-sae"
    (stage / "image").mkdir(parents=True)
    (stage / "manifest.json").write_text("{}")
    (stage / "image" / "eval.json").write_text(json.dumps(_suite()))
    return RunDir.open(tmp_path / "run")


def test_section_renders_the_suite(run: RunDir) -> None:
    sec = sae_eval(run)
    assert sec["status"] == "ran"
    recon, down = sec["tables"]
    assert [r["tokens"] for r in recon["rows"]] == ["all", "cls", "patch"]
    assert recon["rows"][0]["rows"] == 300 and "training rows" in recon["note"]
    (row,) = down["rows"]
    assert row["recovered"] == {"value": None, "low": None, "high": None}
    assert cell(row["recovered"], "pct") == "n/a"  # undefined, never 0%
    assert cell(row["acc_clean"], "pct") == "90.0% [80.0%, 97.0%]"
    assert row["scale"] == pytest.approx(35.2)
    json.dumps(sec, allow_nan=False)


def test_dashboard_line_shows_the_same_numbers(run: RunDir) -> None:
    line = suite_line(run, "image")
    fvu = cell(sae_eval(run)["tables"][0]["rows"][0]["fvu"], "num")
    assert f"FVU {fvu}" in line and "loss recovered n/a" in line and "KL 0.120" in line
    assert suite_line(run, "text") == ""
    card = '<div class="card"><h4>x</h4><p class="meta">AUROC</p></div>'
    assert with_suite(card, line).index(line) > card.index("</p>")
    assert with_suite(card, "") == card


def test_not_run_without_an_eval_json(tmp_path: Path) -> None:
    (tmp_path / "r").mkdir()
    sec = sae_eval(RunDir.open(tmp_path / "r"))
    assert sec["status"] == "not run" and sec["note"].startswith("not run")


def test_report_includes_the_section(run: RunDir) -> None:
    from vlmfast.report import build_report

    paths = build_report(run.path)
    html = paths["html"].read_text()
    assert "SAE evaluation" in html and "loss recovered" in html
    assert "SAE evaluation" in paths["markdown"].read_text()
