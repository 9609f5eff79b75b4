"""``vlmfast train-sae`` end to end on a tiny store (single SAE, sweep on joint.embed, resume)."""

from __future__ import annotations

import json

import pytest
import torch

from vlmfast.cli import main
from vlmfast.sae import TopKSAE

store_mod = pytest.importorskip("vlmfast.store")


@pytest.fixture
def tiny_store(tmp_path):
    g = torch.Generator().manual_seed(0)
    store = store_mod.ActivationStore.create(
        tmp_path / "acts.zarr", {"image.embed": 16, "text.embed": 16}, chunk_rows=128
    )
    store.append("image.embed", torch.randn(512, 16, generator=g).numpy())
    store.append("text.embed", (torch.randn(256, 16, generator=g) + 2).numpy())
    return tmp_path / "acts.zarr"


def test_train_single_and_resume(tiny_store, tmp_path):
    out = tmp_path / "sae"
    args = [
        "train-sae",
        "--store",
        str(tiny_store),
        "--hook",
        "image.embed",
        "--k",
        "4",
        "--n-latents",
        "32",
        "--batch-size",
        "64",
        "--tokens",
        "640",
        "--out",
        str(out),
        "--log-every",
        "5",
        "--checkpoint-every",
        "5",
        "--no-progress",
    ]
    assert main(args) == 0
    sae = TopKSAE.load(out)
    assert (sae.d_in, sae.n_latents, sae.k, sae.cfg.hook) == (16, 32, 4, "image.embed")
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == 10 and lines[-1]["window_fvu"] < 1.5
    assert {"tokens_per_s", "window_l0", "dead_frac"} <= set(lines[-1])
    # resume to a longer run continues from step 10
    assert (
        main(
            [
                *args[:-9],
                "--tokens",
                "1280",
                "--out",
                str(out),
                "--log-every",
                "5",
                "--resume",
                "--no-progress",
            ]
        )
        == 0
    )
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == 20


def test_sweep_on_joint_embed(tiny_store, tmp_path):
    out = tmp_path / "sweep"
    assert (
        main(
            [
                "train-sae",
                "--store",
                str(tiny_store),
                "--hook",
                "joint.embed",
                "--k",
                "2",
                "4",
                "--n-latents",
                "24",
                "--batch-size",
                "48",
                "--tokens",
                "480",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    for name in ("k2_n24", "k4_n24"):
        assert TopKSAE.load(out / name).cfg.hook == "joint.embed"


def test_clear_errors(tiny_store, tmp_path, capsys):
    assert (
        main(
            [
                "train-sae",
                "--store",
                str(tiny_store),
                "--hook",
                "image.nope",
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 1
    )
    assert "image.nope" in capsys.readouterr().err
    assert (
        main(
            [
                "train-sae",
                "--store",
                str(tiny_store),
                "--hook",
                "image.embed",
                "--k",
                "40",
                "--n-latents",
                "32",
                "--out",
                str(tmp_path / "y"),
            ]
        )
        == 1
    )
    assert "exceeds" in capsys.readouterr().err


@pytest.mark.slow
def test_torchrun_two_cpu_ranks(tiny_store, tmp_path):
    import os
    import subprocess
    import sys

    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "vlmfast",
        "train-sae",
        "--store",
        str(tiny_store),
        "--hook",
        "image.embed",
        "--k",
        "4",
        "--n-latents",
        "32",
        "--batch-size",
        "64",
        "--tokens",
        "640",
        "--out",
        str(out),
        "--device",
        "cpu",
        "--no-progress",
        "--log-every",
        "10",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, _root_cause(done.stderr)
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["tokens"] == 640 and last["window_rows"] == 640  # both ranks' rows counted
    assert TopKSAE.load(out).n_latents == 32


def _root_cause(stderr: str) -> str:
    """The lines of a failed torchrun that say why (a rank's own error), then the tail."""
    keys = ("terminate", "what()", "Error", "error:", "enforce", "panicked", "Abort", "gloo")
    lines = stderr.splitlines()
    picked = [ln for ln in lines if any(k in ln for k in keys)][:40]
    return "\n".join([*picked, "--- tail ---", *lines[-25:]])
