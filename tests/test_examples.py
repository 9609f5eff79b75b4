"""The example configs run: ``examples/your_images.toml`` end to end on a folder of images
the test writes (``synthetic:tiny`` in place of the pretrained model, tiny stage settings),
and every example says in its header what it needs and how long it takes."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from vlmfast.cli import main

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"

TINY: dict[str, dict[str, Any]] = {
    "model": {"spec": "synthetic:tiny"},
    "run": {"threads": 1, "progress": False},
    "cache": {"batch_size": 16, "dtype": "float32"},
    "sae": {"n_latents": 32, "k": 4, "steps": 10, "batch_size": 64},
    "trace": {"pairs": 2, "samples": 1, "null": 0, "kinds": ["resid"]},
    "attribute": {"pairs": 2, "exact": False, "null": 0},
    "circuit": {"pairs": 2, "null": 0, "grid": 4, "draw": False},
}
"""Overrides of the example's keys: the bundled model and the smallest settings that run."""


def _to_toml(data: dict[str, dict[str, Any]]) -> str:
    """TOML of a two-level table of strings, numbers, booleans and lists of those."""
    out = []
    for section, table in data.items():
        out.append(f"[{section}]")
        out += [f"{key} = {json.dumps(value)}" for key, value in table.items()]
        out.append("")
    return "\n".join(out)


def write_image_folder(folder: Path, n: int = 12) -> list[str]:
    """``n`` synthetic images as PNG files with a ``captions.jsonl``; returns the captions
    (at least two name ``red``, for the circuit stage)."""
    from vlmfast.data import open_source

    folder.mkdir(parents=True)
    records = list(open_source("synthetic:n=200,seed=5"))
    red = [r for r in records if " red " in f" {r.caption} "][:3]
    chosen = red + [r for r in records if r not in red][: n - len(red)]
    lines = []
    captions = []
    for i, rec in enumerate(chosen):
        assert rec.image is not None and rec.caption is not None
        rec.image.save(folder / f"img_{i:02d}.png")
        lines.append(json.dumps({"image": f"img_{i:02d}.png", "caption": rec.caption}))
        captions.append(rec.caption)
    (folder / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return captions


def tiny_copy(
    example: Path, folder: Path, out: Path, extra: dict[str, dict[str, Any]] | None = None
) -> Path:
    """A copy of ``example`` reading ``folder`` with the :data:`TINY` overrides (and
    ``extra``'s), its run directory ``out``."""
    data = tomllib.loads(example.read_text())
    data.setdefault("data", {})["spec"] = f"folder:{folder}"
    data["model"].pop("pretrained", None)
    data["run"]["out"] = str(out)
    for section, table in [*TINY.items(), *(extra or {}).items()]:
        data.setdefault(section, {}).update(table)
    path = out.parent / f"tiny_{example.name}"
    path.write_text(_to_toml(data))
    return path


def test_your_images_example_runs_end_to_end(tmp_path: Path) -> None:
    example = EXAMPLES / "your_images.toml"
    assert tomllib.loads(example.read_text())["data"]["spec"].startswith("folder:")
    write_image_folder(tmp_path / "my_images")
    run = tmp_path / "run"
    config = tiny_copy(example, tmp_path / "my_images", run)
    assert main(["run", "--config", str(config)]) == 0
    assert (run / "report" / "report.html").is_file()
    cache = json.loads((run / "cache" / "result.json").read_text())
    assert cache["samples"] == 12 and cache["data"].startswith("folder:")
    score = json.loads((run / "score" / "result.json").read_text())
    assert set(score["modalities"]) >= {"image", "text"}
    circuit = json.loads((run / "circuit" / "result.json").read_text())
    assert "red" in circuit


@pytest.mark.parametrize("path", sorted(EXAMPLES.iterdir()), ids=lambda p: p.name)
def test_every_example_says_what_it_needs_and_how_long(path: Path) -> None:
    head = path.read_text().split("\n\n", 1)[0]
    assert "Needs:" in head and "Takes:" in head, f"{path.name}: header lacks Needs:/Takes:"
