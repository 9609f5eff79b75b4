"""``vlmfast circuit`` on the bundled model writes the circuit's JSON, table, curve and drawings."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from vlmfast.cli import main


def test_circuit_cli_writes_json_table_curve(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "c"
    code = main(
        [
            "circuit", "--model", "synthetic:tiny", "--data", "synthetic:n=4,seed=0",
            "--n", "4", "--out", str(out), "--corrupt", "image", "--components", "heads",
            "--null", "20", "--grid", "8", "--null-grid", "4", "--no-progress",
        ]
    )  # fmt: skip
    assert code == 0
    data = json.loads((out / "circuit.json").read_text())
    assert data["ablation"] == "mean" and data["ranking"] == "atp"
    assert data["n_nodes"] == len(data["order"]) > 0
    assert len(data["components"]) == data["size"] >= 1
    assert data["curve"]["f"][0] == 0.0 and data["curve"]["f"][-1] == 1.0
    assert data["null"]["size"] == 20 and 0 < data["null"]["pvalue"] <= 1
    assert len(data["null"]["k"]) == data["meta"]["null_grid"] == 4
    assert set(data["null"]["k"]) <= set(data["curve"]["k"])
    assert data["meta"]["run"]["corrupt"] == "image-shift"
    table = pq.read_table(out / "circuit.parquet").to_pylist()
    curve = [r for r in table if r["table"] == "curve"]
    comps = [r for r in table if r["table"] == "component"]
    assert [r["k"] for r in curve] == data["curve"]["k"]
    assert len(comps) == data["n_nodes"]
    assert sum(bool(r["in_circuit"]) for r in comps) == data["size"]
    assert (out / "circuit_curve.png").stat().st_size > 0
    assert "<svg" in (out / "circuit.svg").read_text()
    assert "digraph" in (out / "circuit.dot").read_text()
    assert f"circuit: {data['size']} of {data['n_nodes']}" in capsys.readouterr().out


def test_circuit_cli_bad_target_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "circuit", "--model", "synthetic:tiny", "--data", "synthetic:n=4,seed=0",
            "--out", str(tmp_path / "c"), "--target", "1.5", "--null", "0", "--no-progress",
        ]
    )  # fmt: skip
    assert code == 1
    assert "target" in capsys.readouterr().err


def test_circuit_cli_bad_null_grid_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "circuit", "--model", "synthetic:tiny", "--data", "synthetic:n=4,seed=0",
            "--out", str(tmp_path / "c"), "--null-grid", "1", "--no-progress",
        ]
    )  # fmt: skip
    assert code == 1
    assert "null_grid" in capsys.readouterr().err


def test_circuit_cli_both_swap_spans_both_towers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "c"
    argv = [
        "circuit", "--model", "synthetic:tiny", "--data", "synthetic:n=200,seed=13",
        "--n", "4", "--out", str(out), "--corrupt", "both-swap", "--concept", "red",
        "--components", "heads", "--null", "20", "--grid", "8", "--no-progress",
    ]  # fmt: skip
    assert main(argv) == 0
    data = json.loads((out / "circuit.json").read_text())
    assert data["meta"]["corrupt"] == "both" and data["meta"]["corrupted"] == ["image", "text"]
    assert set(data["meta"]["per_tower"]) == {"image", "text"}
    assert data["meta"]["run"]["concept"] == "red" and "meeting" in data["meta"]
    svg = (out / "circuit.svg").read_text()
    assert "image.embed" in svg and "text.embed" in svg
    capsys.readouterr()
    start = argv.index("--corrupt")
    assert main([*argv[:start], "--corrupt", "image-swap", "--no-progress"]) != 0
    assert "--concept" in capsys.readouterr().err
