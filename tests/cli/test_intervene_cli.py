"""``vlmfast intervene`` reads a saved scoring result and writes JSON + a table."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import vlmfast as vf
from vlmfast.causal import EvalSet, load_scores, top_units, unit_activations
from vlmfast.cli import main


@pytest.fixture(scope="module")
def scores_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    pair = vf.load_pair("synthetic:tiny").eval()
    ev = EvalSet.synthetic(48, seed=0)
    acts = unit_activations(pair, images=ev.images, hooks="image.blocks.*.mlp.post")
    res = vf.scoring.score_units(
        acts.values,
        ev.labels,
        concepts=vf.scoring.ConceptSet.make(ev.concepts, ev.kinds),
        meta=acts.meta(),
    )
    out = tmp_path_factory.mktemp("scores")
    res.save(out)
    return out, res


def test_saved_scores_give_the_same_top_units(scores_dir: tuple[Path, object]) -> None:
    path, res = scores_dir
    saved = load_scores(path)
    assert top_units(saved, "blue", n=7).units == top_units(res, "blue", n=7).units
    assert top_units(saved, "blue", n=7).model == "synthetic:tiny"


def test_intervene_cli_writes_json_and_table(
    scores_dir: tuple[Path, object], tmp_path: Path
) -> None:
    path, _ = scores_dir
    out = tmp_path / "iv"
    code = main(
        [
            "intervene", "--model", "synthetic:tiny", "--data", "synthetic:test:24:1:1",
            "--scores", str(path), "--out", str(out), "--concepts", "red", "--n", "10",
            "--null", "20", "--no-progress",
        ]
    )  # fmt: skip
    assert code == 0
    doc = json.loads((out / "intervene.json").read_text())
    (r,) = doc["results"]
    assert r["concept"] == "red" and len(r["units"]["units"]) == 10
    assert set(r["others"]["per_concept"]) == {
        "green", "blue", "yellow", "purple", "orange", "cyan", "white"
    }  # fmt: skip
    assert 0 < r["null"]["pvalue"]["margin"] <= 1
    rows = pq.read_table(out / "intervene.parquet").to_pylist()
    assert {row["role"] for row in rows} == {"target", "other", "overall"}
    assert len(rows) == 8 * (1 + 7 + 1)


def test_intervene_cli_bad_concept(
    scores_dir: tuple[Path, object], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = scores_dir
    code = main(
        [
            "intervene",
            "--model",
            "synthetic:tiny",
            "--data",
            "synthetic:test:8",
            "--scores",
            str(path),
            "--out",
            str(tmp_path),
            "--concepts",
            "magenta",
            "--null",
            "0",
        ]
    )
    assert code == 1
    assert "--concepts: 'magenta'" in capsys.readouterr().err
