"""``vlmfast demo``: the whole pipeline on the bundled model and synthetic data."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    from vlmfast.cli.run import add_run_options

    parser = subparsers.add_parser(
        "demo",
        help="run the end-to-end demo pipeline on the bundled model and synthetic data",
        description=(
            "Runs the bundled demo config (vlmfast/pipeline/demo.toml, also examples/demo.toml) "
            "through `vlmfast run`'s stages on the bundled synthetic:tiny CLIP: cache both "
            "towers at every token, train top-k SAEs on image patch rows and caption token "
            "rows, score features and neurons for concept selectivity (the ground-truth "
            "table), trace, attribute, find circuits, ablate and steer, and write the report. "
            "A re-run skips the stages that are up to date."
        ),
    )
    add_run_options(parser)
    parser.set_defaults(out=Path("runs/demo"))
    parser.add_argument("--samples", type=int, default=None, help="image-caption pairs to cache")
    parser.add_argument("--sae-steps", type=int, default=None, help="SAE training steps")
    parser.add_argument("--seed", type=int, default=None, help="seed of the data and the stages")
    parser.add_argument("--progress", action="store_true", help=argparse.SUPPRESS)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vlmfast.demo import DemoConfig, run_demo
    from vlmfast.errors import InputError

    if args.samples is not None and args.samples < 50:
        raise InputError(f"--samples must be at least 50, got {args.samples}")
    if args.sae_steps is not None and args.sae_steps < 1:
        raise InputError(f"--sae-steps must be at least 1, got {args.sae_steps}")
    run_demo(
        DemoConfig(
            out=args.out,
            n_samples=args.samples,
            sae_steps=args.sae_steps,
            seed=args.seed,
            progress=False if getattr(args, "no_progress", False) else None,
        ),
        force=getattr(args, "force", []) or [],
        dry_run=bool(getattr(args, "dry_run", False)),
    )
    return 0
