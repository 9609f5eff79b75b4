"""The table writer every front door shares (``vlmfast.tables``)."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from vlmfast.tables import write_table


def test_write_table_round_trips_and_unions_columns(tmp_path: Path) -> None:
    rows: list[dict[str, object]] = [{"a": 1, "b": 0.5}, {"a": 2, "c": "x"}]
    path = write_table(rows, tmp_path / "t")
    assert path == tmp_path / "t.parquet"
    got = pq.read_table(path)
    assert got.column_names == ["a", "b", "c"]
    assert got.to_pylist() == [{"a": 1, "b": 0.5, "c": None}, {"a": 2, "b": None, "c": "x"}]


def test_write_table_keeps_a_parquet_suffix(tmp_path: Path) -> None:
    assert write_table([{"a": 1}], tmp_path / "t.parquet") == tmp_path / "t.parquet"
    assert write_table([], tmp_path / "empty").exists()
