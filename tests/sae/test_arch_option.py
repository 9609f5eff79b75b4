"""``train-sae --arch`` and its options: into every SAEConfig of the run, recorded in
``cfg.json`` and the run's output; bad values are one-line errors naming the key; a
resumed run keeps its architecture."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from vlmfast.cli import main
from vlmfast.errors import InputError
from vlmfast.sae import TopKSAE, TrainSAEConfig
from vlmfast.sae.recipe import sae_config
from vlmfast.store import ActivationStore


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("arch") / "acts.zarr"
    g = torch.Generator().manual_seed(0)
    store = ActivationStore.create(path, {"image.embed": 8}, chunk_rows=64)
    store.append("image.embed", torch.randn(512, 8, generator=g).numpy())
    store.close()
    return path


def _run(store: Path, out: Path, *extra: str) -> int:
    return main(
        ["train-sae", "--store", str(store), "--hook", "image.embed", "--k", "2",
         "--n-latents", "16", "--batch-size", "32", "--tokens", str(32 * 8), "--device", "cpu",
         "--checkpoint-every", "4", "--out", str(out), "--no-progress", *extra]
    )  # fmt: skip


@pytest.mark.parametrize(
    ("arch", "options", "recorded"),
    [
        ("batchtopk", ["--threshold-ema", "0.05"], {"threshold_ema": 0.05}),
        ("matryoshka", ["--groups", "4", "4", "8"], {"groups": [4, 4, 8]}),
        ("jumprelu", ["--l0-coef", "0.3", "--l0-coef-adapt", "0"], {"l0_coef": 0.3}),
    ],
)
def test_arch_and_its_options_reach_the_checkpoint_and_the_output(
    store_path: Path, tmp_path: Path, capsys: Any, arch: str, options: list[str], recorded: Any
) -> None:
    out = tmp_path / arch
    assert _run(store_path, out, "--arch", arch, *options) == 0
    cfg = json.loads((out / "cfg.json").read_text())["vlmfast"]
    assert cfg["arch"] == arch
    assert {k: cfg[k] for k in recorded} == recorded
    assert TopKSAE.load(out).cfg.arch == arch
    assert f"trained 1 {arch} SAE(s)" in capsys.readouterr().out


def test_every_sae_of_a_sweep_and_of_several_hooks_gets_the_arch() -> None:
    cfg = TrainSAEConfig(hook=["image.a", "image.b"], arch="jumprelu", bandwidth=0.5)
    for hook in cfg.hooks:
        made = sae_config(cfg, hook, 8, 2, 16, dead_tokens=32)
        assert (made.arch, made.bandwidth, made.hook) == ("jumprelu", 0.5, hook)
    assert sae_config(TrainSAEConfig(hook="image.a"), "image.a", 8, 2, 16).arch == "topk"


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--arch", "vanilla"], "arch must be one of"),
        (["--arch", "topk", "--groups", "8", "8"], "groups=[8, 8] applies to arch matryoshka"),
        (["--arch", "batchtopk", "--l0-coef", "0.2"], "l0_coef=0.2 applies to arch jumprelu"),
        (["--arch", "matryoshka", "--groups", "4", "4"], "SAEConfig.groups [4, 4] sum to 8"),
    ],
)
def test_bad_arch_options_are_one_line_errors_naming_the_key(
    store_path: Path, tmp_path: Path, capsys: Any, args: list[str], named: str
) -> None:
    out = tmp_path / "bad"
    assert _run(store_path, out, *args) == 1
    err = capsys.readouterr().err.strip()
    assert named in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_resume_refuses_another_arch(store_path: Path, tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "run"
    assert _run(store_path, out, "--arch", "batchtopk") == 0
    assert _run(store_path, out, "--arch", "topk", "--resume") == 1
    err = capsys.readouterr().err
    assert "is a 'batchtopk' SAE, not arch='topk'" in err
    assert _run(store_path, out, "--arch", "batchtopk", "--resume") == 0


def test_library_rejects_an_unknown_arch() -> None:
    with pytest.raises(InputError, match="arch must be one of topk, batchtopk"):
        TrainSAEConfig(hook="image.embed", arch="gated")


def test_encoder_init_norm_reaches_the_checkpoint(store_path: Path, tmp_path: Path) -> None:
    assert _run(store_path, tmp_path / "tied", "--encoder-init-norm", "1.0") == 0
    assert json.loads((tmp_path / "tied" / "cfg.json").read_text())["vlmfast"][
        "encoder_init_norm"
    ] == pytest.approx(1.0)
    assert _run(store_path, tmp_path / "default") == 0
    default = json.loads((tmp_path / "default" / "cfg.json").read_text())["vlmfast"]
    assert default["encoder_init_norm"] == pytest.approx(3.0**-0.5)
    made = sae_config(TrainSAEConfig(hook="image.a", encoder_init_norm=0.25), "image.a", 8, 2, 16)
    assert made.encoder_init_norm == 0.25
    assert _run(store_path, tmp_path / "bad", "--encoder-init-norm", "0") == 1  # one-line error
