"""Tables the CLIs write: one parquet file per table (pyarrow is a dependency)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vlmfast.errors import InputError


def write_table(rows: Sequence[Mapping[str, Any]], stem: Path | str) -> Path:
    """Writes ``rows`` (dicts with the same keys) to ``stem.parquet``; returns the path.

    Columns follow the first row's key order; an empty table keeps no columns. A row
    whose keys differ from the first row's is an error naming the row, not a ragged file.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(stem)
    if path.suffix != ".parquet":
        path = path.with_name(path.name + ".parquet")
    keys = list(rows[0]) if rows else []
    for i, row in enumerate(rows):
        if list(row) != keys:
            raise InputError(f"table {path.name}: row {i} has columns {list(row)}, expected {keys}")
    columns = {k: [row[k] for row in rows] for k in keys}
    pq.write_table(pa.table(columns), path)
    return path
