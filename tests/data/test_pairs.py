"""The one record filter of the causal commands and stages (``vlmfast.data.pairs``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlmfast.data.pairs import image_caption_records, read_pairs
from vlmfast.errors import InputError


def test_image_caption_records(tmp_path: Path) -> None:
    recs = image_caption_records("synthetic:n=3,seed=0", 3)
    assert len(recs) == 3 and all(r.image is not None and r.caption for r in recs)
    with pytest.raises(InputError, match="need at least 5"):
        image_caption_records("synthetic:n=3,seed=0", None, minimum=5)
    with pytest.raises(InputError, match="limit must be >= 2"):
        image_caption_records("synthetic:n=3,seed=0", 1, minimum=2)


def test_read_pairs_keeps_the_skip_report(tmp_path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp_path / "a.png")
    lines = [
        json.dumps({"image": "a.png", "caption": "a red square"}),
        "{broken json",
        json.dumps({"image": "a.png"}),
        json.dumps({"image": "gone.png", "caption": "missing"}),
    ]
    (tmp_path / "captions.jsonl").write_text("\n".join(lines) + "\n")
    pairs = read_pairs(str(tmp_path), None)
    assert pairs.captions == ["a red square"] and len(pairs) == 1
    assert pairs.report.n_bad == 3 and pairs.report.n_ok == 1
    with pytest.raises(InputError, match=r"yielded 1 records.*need at least 2.*3 bad records"):
        read_pairs(str(tmp_path), None, minimum=2)


def test_read_pairs_naming_a_concept() -> None:
    pairs = read_pairs("synthetic:n=200,seed=1", 3, naming="red", minimum=2)
    assert len(pairs) == 3 and all("red" in c for c in pairs.captions)
    with pytest.raises(InputError, match="captions naming 'giraffe'"):
        read_pairs("synthetic:n=20,seed=1", 3, naming="giraffe", minimum=2)


def test_csv_with_other_columns_names_them(tmp_path: Path) -> None:
    from vlmfast.data import open_source

    (tmp_path / "captions.csv").write_text("file_path,description\na.png,a cat\nb.png,a dog\n")
    with pytest.raises(InputError, match=r"columns are file_path, description.*image column"):
        open_source(str(tmp_path))
