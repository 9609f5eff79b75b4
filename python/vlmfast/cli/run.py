"""``vlmfast run --config FILE``: the whole pipeline, each stage resumable and skipped when
up to date.

    vlmfast run --config examples/demo.toml --out runs/demo
    vlmfast run --config x.toml --dry-run            # what would run, and why
    vlmfast run --config x.toml --force score        # score and everything downstream

Stages: cache, train-sae, score, trace, attribute, circuit, intervene, report. A stage is
skipped when ``RUN/<stage>/manifest.json`` carries its current key (a hash of its config
slice, its upstream stages' keys and its schema version) and its outputs exist; a stage
killed part-way has no manifest and reruns from scratch.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from vlmfast.cli import args as A


def add_run_options(p: argparse.ArgumentParser) -> None:
    """The options ``vlmfast run`` and ``vlmfast demo`` share."""
    p.add_argument("--out", type=A.out_dir, default=None, help="run directory (default: [run].out)")
    p.add_argument(
        "--force",
        action="append",
        default=[],
        metavar="STAGE",
        help="rerun STAGE and everything downstream of it (repeatable)",
    )
    p.add_argument("--dry-run", action="store_true", help="print run/skip per stage and why")
    A.add_progress_arg(p)
    p.set_defaults(resumable=True)  # a failed stage leaves the run's finished stages


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "run",
        help="run the pipeline of a TOML config (cache ... report), resumably",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", required=True, type=Path, help="pipeline config (TOML)")
    add_run_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vlmfast.pipeline import load_config, run_pipeline

    cfg = load_config(args.config)
    if args.no_progress:
        cfg.run.progress = False
    result = run_pipeline(cfg, args.out, force=args.force, dry_run=args.dry_run)
    if not args.dry_run:
        print(f"run directory: {result.run_dir}")
        report = result.run_dir / "report" / "report.html"
        if report.exists():
            print(f"report: {report}")
    return 0
