"""Inputs and tables the analysis CLIs share: image-caption records in, parquet out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vlmfast.errors import InputError


def image_caption_records(spec: str, limit: int | None, minimum: int = 1) -> list[Any]:
    """The records of ``--data spec`` (at most ``limit``) that have both an image and a caption.

    Fewer than ``minimum`` such records is an InputError naming ``--data``.
    """
    from vlmfast.data import open_source

    if limit is not None and limit < minimum:
        raise InputError(f"the record limit must be >= {minimum}, got {limit}")
    records = [r for r in open_source(spec, limit=limit) if r.image is not None and r.caption]
    if len(records) < minimum:
        raise InputError(
            f"--data {spec!r} yielded {len(records)} records with both an image and a caption; "
            f"need at least {minimum}"
        )
    return records


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
