"""``vlmfast run``: a real (one-stage) run, then --dry-run and --force through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlmfast.cli import main

CONFIG = """
[run]
seed = 3
progress = false
stages = ["cache"]
[data]
spec = "synthetic:n=60,seed=3"
[quality]
enabled = false
[cache]
batch_size = 30
chunk_rows = 256
"""


def test_run_then_dry_run_and_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "x.toml"
    cfg.write_text(CONFIG)
    out = tmp_path / "run"
    assert main(["run", "--config", str(cfg), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "[run 1/1] cache: no outputs yet" in printed and f"run directory: {out}" in printed
    result = json.loads((out / "cache" / "result.json").read_text())
    assert result["hooks"]["image.blocks.3.resid_post"]["rows"] == 60 * 17
    assert result["quality"] is None  # disabled
    assert result["concepts"]["per_kind"]["color"] == 8 and "red" in result["concepts"]["names"]
    assert main(["run", "--config", str(cfg), "--out", str(out), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("skip  cache") and "up to date" in lines[0]
    assert all("not in run.stages" in line for line in lines[1:])
    assert (
        main(["run", "--config", str(cfg), "--out", str(out), "--dry-run", "--force", "cache"]) == 0
    )
    assert capsys.readouterr().out.splitlines()[0].startswith("run   cache      forced")


def test_bad_config_is_a_clear_cli_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[sae]\nlatents = 3\n")
    assert main(["run", "--config", str(cfg), "--dry-run"]) == 1
    err = capsys.readouterr().err
    assert "vlmfast run: error:" in err and "unknown key 'latents' in [sae]" in err
    cfg.write_text(CONFIG)
    assert main(["run", "--config", str(cfg), "--force", "plot", "--dry-run"]) == 1
    assert "--force 'plot' is not a stage" in capsys.readouterr().err
