"""``vlmfast report``: the HTML / Markdown report of a run directory.

    vlmfast report --run runs/demo            # -> runs/demo/report/report.html, .md, results.json
    vlmfast report --run runs/demo --out DIR

Renders what the run's stages left (stages that did not run read "not run"); the page is
self-contained (no network at view time) and the same run gives the same bytes.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from vlmfast.cli import args as A


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "report",
        help="HTML / Markdown report of a `vlmfast run` directory",
        description=(
            "Writes RUN/report/report.html (self-contained: tables, heatmaps, feature "
            "dashboards, circuit diagrams), report.md and results.json."
        ),
    )
    p.add_argument(
        "--run",
        required=True,
        type=A.existing_dir("a run directory, vlmfast run --out"),
        help="run directory (what `vlmfast run` wrote)",
    )
    p.add_argument(
        "--out", type=A.out_dir, default=None, help="output directory (default: RUN/report)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vlmfast.report import build_report

    paths = build_report(Path(args.run), args.out)
    for name in ("html", "markdown", "results"):
        print(f"{name}: {paths[name]}")
    return 0
