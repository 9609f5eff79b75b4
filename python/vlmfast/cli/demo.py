"""``vlmfast demo``: the whole loop on the bundled model and synthetic data."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the end-to-end demo on the bundled model and synthetic data",
        description=(
            "Cache both towers of the bundled synthetic:tiny CLIP at every token, train top-k "
            "SAEs on image patch rows and caption token rows, score features and neurons for "
            "concept selectivity per sample (max over tokens; images against what they show, "
            "captions against what they say), print the ground-truth table, and rank attention "
            "heads by batched activation patching."
        ),
    )
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="output folder")
    parser.add_argument("--samples", type=int, default=3000, help="image-caption pairs to cache")
    parser.add_argument("--sae-steps", type=int, default=3000, help="SAE training steps")
    parser.add_argument("--seed", type=int, default=11, help="seed of the synthetic data")
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vlmfast.demo import DemoConfig, run_demo
    from vlmfast.errors import InputError

    if args.samples < 50:
        raise InputError(f"--samples must be at least 50, got {args.samples}")
    if args.sae_steps < 1:
        raise InputError(f"--sae-steps must be at least 1, got {args.sae_steps}")
    run_demo(
        DemoConfig(
            out=args.out,
            n_samples=args.samples,
            sae_steps=args.sae_steps,
            seed=args.seed,
            progress=args.progress,
        )
    )
    return 0
