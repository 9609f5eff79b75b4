"""The run report: ``build_report(RUN)`` writes ``RUN/report/report.html`` (one
self-contained page: tables, inline SVG figures, feature dashboards, circuit diagrams),
``report.md`` (the same tables) and ``results.json`` (every number both show).

    from vlmfast.report import build_report
    paths = build_report("runs/demo")      # {"html", "markdown", "results", "features"}

Every number is formatted by :mod:`vlmfast.report.fmt` from ``results.json``; the
paper's figures (:mod:`vlmfast.report.paper_claims`) appear beside ours, labelled as its
claims. Stages a run did not configure read "not run".
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["build_report"]


def build_report(run_dir: str | Path, out_dir: str | Path | None = None) -> dict[str, Path]:
    """See :func:`vlmfast.report.build.build_report`."""
    from vlmfast.report.build import build_report as _build

    return _build(run_dir, out_dir)
