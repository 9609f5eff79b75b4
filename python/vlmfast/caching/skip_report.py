"""The skip report: the bad records a cache run's source skipped, kept beside the store.

Written by single-process and multi-rank caching alike (rank 0, after the commit), read by
``vlmfast cache``'s callers (the pipeline's cache stage, the report).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

SKIP_REPORT_FILE = "skipped_records.json"
"""Beside the store's arrays: the bad records the source skipped (counts per reason,
first examples) in this run; zarr readers ignore the file."""


def write_skip_report(out: Path, report: dict[str, Any]) -> None:
    """Writes ``report`` into ``out/skipped_records.json`` atomically."""
    tmp = out / f".{SKIP_REPORT_FILE}.tmp"
    tmp.write_text(json.dumps(report, indent=1, default=str))
    os.replace(tmp, out / SKIP_REPORT_FILE)


def read_skip_report(out: str | os.PathLike[str]) -> dict[str, Any] | None:
    """Returns the skip report a cache run left beside the store, or ``None`` when nothing
    was skipped."""
    path = Path(out) / SKIP_REPORT_FILE
    return json.loads(path.read_text()) if path.exists() else None


def report_skipped(cfg: Any, report: Any, log: Callable[[str], None]) -> None:
    """Prints the source's skip report and writes it beside the store ``cfg.out`` (when
    the source skipped anything); ``report`` is a ``BadRecordReport`` or None."""
    if report is not None and report.n_bad:
        log(f"{cfg.data}: {report.summary()}")
        write_skip_report(Path(cfg.out), report.as_dict())
