"""benches/gpu/run.sh: shell syntax, the plain-torch baselines, and the CPU dry run's JSON."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benches" / "gpu" / "run.sh"
SECTIONS = ("sae", "auroc", "patching")


def _gpu_bench():
    spec = importlib.util.spec_from_file_location("gpu_bench", ROOT / "benches/gpu/gpu_bench.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_script_parses_and_documents_itself():
    assert subprocess.run(["bash", "-n", str(SCRIPT)], check=False).returncode == 0
    text = SCRIPT.read_text()
    for needle in ("maturin build --release", "--dry-run", "pip install", "gpu_check.json"):
        assert needle in text


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "matryoshka", "jumprelu"])
def test_plain_torch_baselines_train(arch):
    bench = _gpu_bench()
    torch.manual_seed(0)
    model = bench.DenseSAE(8, 24, 3, arch, [6, 6, 12])
    x = torch.randn(16, 8)
    z, _ = model.codes(x)
    if arch == "topk":
        assert int((z != 0).sum(1).max()) <= 3
    if arch in ("batchtopk", "matryoshka"):
        assert int((z != 0).sum()) <= 3 * 16
    loss = model.loss(x)
    loss.backward()
    assert torch.isfinite(loss)
    assert model.W_enc.grad is not None and torch.isfinite(model.W_enc.grad).all()


def test_auroc_section_dry_run_json(tmp_path):
    out = tmp_path / "b.json"
    result = _gpu_bench().main([str(out), "--dry-run", "--sections", "auroc"])
    data = json.loads(out.read_text())
    assert data == json.loads(json.dumps(result))
    assert data["dry_run"] is True and data["device"] == "cpu"
    assert {"wall_s", "cpu_s", "features", "concepts", "rows"} <= set(data["auroc"])
    assert data["auroc"]["table_shape"] == [512, 8]


@pytest.mark.slow  # the whole dry run: ~15 s of CPU, minutes of wall on a loaded machine
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_dry_run_writes_one_json_with_every_section(tmp_path):
    dest = tmp_path / "gpu_check.json"
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", str(dest)], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(dest.read_text())
    assert data["dry_run"] is True
    for key in ("started", "finished", "commit", "device", "torch", "parity", "bench_rc"):
        assert key in data
    assert data["parity"]["rc"] == 0 and data["parity"]["tests"] >= 1
    assert data["parity"]["failures"] == 0
    for section in SECTIONS:
        assert "error" not in data[section], data[section]
    for arch in ("topk", "batchtopk", "matryoshka", "jumprelu", "topk_auxk"):
        assert {"vlmfast_s", "plain_torch_s", "speedup"} <= set(data["sae"][arch])
    assert data["patching"]["max_abs_diff"] < 1e-3
