"""`vlmfast cache` on a folder with bad records: the good ones cached, the bad ones reported."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from vlmfast.caching import read_skip_report
from vlmfast.cli import main
from vlmfast.store import ActivationStore


def _folder_with_bad_records(root: Path) -> None:
    """8 good records and 7 bad ones, one of each kind a user meets."""
    lines = []
    for i in range(8):
        Image.new("RGB", (16, 16), (30 * i, 0, 0)).save(root / f"good{i}.png")
        lines.append(json.dumps({"image": f"good{i}.png", "caption": f"a red square {i}"}))
    Image.new("RGB", (16, 16)).save(root / "full.jpg")
    (root / "truncated.jpg").write_bytes((root / "full.jpg").read_bytes()[:40])
    (root / "empty.jpg").write_bytes(b"")
    (root / "text.jpg").write_text("not an image")
    lines += [
        json.dumps({"image": "truncated.jpg", "caption": "truncated"}),
        json.dumps({"image": "empty.jpg", "caption": "empty file"}),
        json.dumps({"image": "text.jpg", "caption": "text named .jpg"}),
        json.dumps({"image": "good0.png", "caption": ""}),
        "{broken json",
        json.dumps({"image": "good1.png"}),
        json.dumps({"image": "missing.png", "caption": "missing image"}),
    ]
    (root / "captions.jsonl").write_text("\n".join(lines) + "\n")


def test_cache_reports_the_records_it_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    _folder_with_bad_records(data)
    out = tmp_path / "store.zarr"
    argv = ["cache", "--model", "synthetic:tiny", "--data", str(data), "--out", str(out)]
    assert main([*argv, "--hooks", "image.embed", "--batch-size", "4"]) == 0
    printed = capsys.readouterr()
    text = printed.out + printed.err
    assert "7 " in text and "skipped" in text
    store = ActivationStore.open(out)
    assert int(store.n_rows("image.embed")) == 8
    report = read_skip_report(out)
    assert report is not None and report["n_bad"] == 7 and report["n_ok"] == 8
    assert sum(report["counts"].values()) == 7


def test_a_folder_of_only_bad_records_says_how_many(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "captions.jsonl").write_text('{broken\n{"image": "gone.png", "caption": "x"}\n')
    out = tmp_path / "store.zarr"
    argv = ["cache", "--model", "synthetic:tiny", "--data", str(data), "--out", str(out)]
    assert main([*argv, "--hooks", "image.embed"]) != 0
    err = capsys.readouterr().err
    assert "no records to cache" in err and "2 bad records skipped" in err
