"""The CLIs' shared inputs and table writer."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from vlmfast.cli._tables import image_caption_records, write_table
from vlmfast.errors import InputError


def test_write_table_round_trips_and_unions_columns(tmp_path: Path) -> None:
    rows = [{"a": 1, "b": 0.5}, {"a": 2, "c": "x"}]
    path = write_table(rows, tmp_path / "t")
    assert path == tmp_path / "t.parquet"
    got = pq.read_table(path)
    assert got.column_names == ["a", "b", "c"]
    assert got.to_pylist() == [{"a": 1, "b": 0.5, "c": None}, {"a": 2, "b": None, "c": "x"}]


def test_write_table_keeps_a_parquet_suffix(tmp_path: Path) -> None:
    assert write_table([{"a": 1}], tmp_path / "t.parquet") == tmp_path / "t.parquet"
    assert write_table([], tmp_path / "empty").exists()


def test_image_caption_records(tmp_path: Path) -> None:
    recs = image_caption_records("synthetic:n=3,seed=0", 3)
    assert len(recs) == 3 and all(r.image is not None and r.caption for r in recs)
    with pytest.raises(InputError, match="need at least 5"):
        image_caption_records("synthetic:n=3,seed=0", None, minimum=5)
    with pytest.raises(InputError, match="limit must be >= 2"):
        image_caption_records("synthetic:n=3,seed=0", 1, minimum=2)
