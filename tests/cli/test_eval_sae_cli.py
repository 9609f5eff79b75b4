"""``vlmfast eval-sae``: the suite from a store and the bundled tiny model, and bad inputs."""

from __future__ import annotations

import json

import pytest
import torch

from vlmfast.cli import main
from vlmfast.sae import TopKSAE

HOOK = "image.blocks.0.resid_post"


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    from vlmfast.caching import CacheConfig, run_cache

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("evalsae")
    store = run_cache(
        CacheConfig(
            model="synthetic:tiny",
            data="synthetic:n=24,seed=5",
            hooks=[HOOK],
            out=root / "store.zarr",
            positions="all",
            batch_size=24,
            chunk_rows=256,
            progress=False,
        ),
        log=lambda _m: None,
    )
    width = int(store.width(HOOK))
    sae = TopKSAE(width, 64, 8, hook=HOOK, rows="tokens")
    sae.init_from_batch(store.read(HOOK).float())
    sae.save(root / "sae")
    TopKSAE(width + 1, 64, 8, hook=HOOK).save(root / "wide")
    TopKSAE(width, 64, 8, hook="text.blocks.0.resid_post").save(root / "text")
    return root


def test_eval_sae_writes_the_suite(cached, capsys):
    out = cached / "eval.json"
    code = main(
        [
            "eval-sae", "--sae", str(cached / "sae"), "--store", str(cached / "store.zarr"),
            "--model", "synthetic:tiny", "--data", "synthetic:n=24,seed=9", "--pairs", "24",
            "--n-boot", "100", "--out", str(out),
        ]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    res = json.loads(out.read_text())
    rec, down = res["reconstruction"], res["downstream"]
    assert res["hook"] == HOOK and res["rows"]["rows"] == "tokens"
    assert sorted(rec["by_type"]) == ["patch"] and rec["overall"]["n_rows"] == 24 * 16
    assert len(rec["overall"]["density_histogram"]["counts"]) == 20
    assert down["n_pairs"] == 24 and down["positions"] == {HOOK: "patches"}
    assert down["logit_scale"] > 1 and not down["temperature_free"]
    assert down["loss_recovered"]["ci"] is None or len(down["loss_recovered"]["ci"]) == 2
    assert "downstream (24 pairs" in capsys.readouterr().out


def _err(argv, capsys) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err


def test_bad_inputs_are_one_line_errors_naming_the_input(cached, capsys, tmp_path):
    store = str(cached / "store.zarr")
    out = str(tmp_path / "e.json")
    err = _err(
        ["eval-sae", "--sae", str(tmp_path / "nope"), "--store", store, "--out", out], capsys
    )
    assert "nope" in err
    err = _err(["eval-sae", "--sae", str(cached / "text"), "--store", store, "--out", out], capsys)
    assert "text.blocks.0.resid_post" in err and "store.zarr" in err
    err = _err(["eval-sae", "--sae", str(cached / "wide"), "--store", store, "--out", out], capsys)
    assert HOOK in err and "d_in" in err and "store.zarr" in err
    err = _err(["eval-sae", "--sae", str(cached / "sae"), "--out", out], capsys)
    assert "--store" in err
    err = _err(
        ["eval-sae", "--sae", str(cached / "sae"), "--model", "synthetic:tiny", "--out", out],
        capsys,
    )
    assert "--data" in err
    err = _err(
        ["eval-sae", "--sae", str(cached / "sae"), "--store", store, "--out", str(tmp_path)], capsys
    )
    assert "JSON file" in err
    assert not (tmp_path / "e.json").exists()
