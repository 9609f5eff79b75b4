"""The ``vlmfast`` command line: one module per subcommand, each with ``register``.

A subcommand module defines ``register(subparsers)``, which adds its parser and
sets ``func`` (taking the parsed namespace, returning an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from vlmfast import __version__
from vlmfast.errors import VlmfastError

# subcommand modules under vlmfast.cli, in --help order
_COMMAND_MODULES: tuple[str, ...] = (
    "demo",
    "models",
    "synth",
    "cache",
    "train_sae",
    "score",
    "attribute",
    "intervene",
    "direct_effects",
    "trace",
    "circuit",
    "run",
    "report",
)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="vlmfast",
        description="Trace and test concept binding in CLIP-style vision-language models.",
    )
    parser.add_argument("--version", action="version", version=f"vlmfast {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        importlib.import_module(f"vlmfast.cli.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except VlmfastError as err:
        print(f"vlmfast {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"vlmfast {args.command}: interrupted", file=sys.stderr)
        return 130
