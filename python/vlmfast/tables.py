"""Tables every front door writes: rows of dicts to one parquet file.

``write_table`` is the one writer the CLI commands, the pipeline stages and the report
share, so a command and its stage write the same columns in the same order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def write_table(rows: Sequence[Mapping[str, Any]], stem: Path | str) -> Path:
    """Writes ``rows`` to ``stem.parquet`` and returns the path.

    Columns are the union of the rows' keys in first-seen order; a row without a column
    gets a null there. pyarrow is a dependency, so every table is parquet.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(stem)
    if path.suffix != ".parquet":
        path = path.with_name(path.name + ".parquet")
    keys = list(dict.fromkeys(k for row in rows for k in row))
    pq.write_table(pa.table({k: [row.get(k) for row in rows] for k in keys}), path)
    return path
