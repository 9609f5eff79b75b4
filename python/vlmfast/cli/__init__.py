"""The ``vlmfast`` command line: one module per subcommand, each with ``register``.

A subcommand module defines ``register(subparsers)``, which adds its parser and
sets ``func`` (taking the parsed namespace, returning an exit code). A command parses
its arguments into the library's config, calls the library function its pipeline stage
also calls, and prints. Shared pieces: ``args`` (the arguments every command declares
alike: model, data, output, corruption, and the ``type=`` validators of every number),
``outputs`` (one-line errors, no half-written output left behind, the data source's
skip report). Public API: ``main``, ``build_parser``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from vlmfast import __version__
from vlmfast.cli.args import CliParser, UsageError
from vlmfast.cli.outputs import new_outputs, one_line, remove_outputs
from vlmfast.errors import VlmfastError

# subcommand modules under vlmfast.cli, in --help order
_COMMAND_MODULES: tuple[str, ...] = (
    "demo",
    "models",
    "synth",
    "cache",
    "train_sae",
    "eval_sae",
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
    parser = CliParser(
        prog="vlmfast",
        description="Trace and test concept binding in CLIP-style vision-language models.",
    )
    parser.add_argument("--version", action="version", version=f"vlmfast {__version__}")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the full traceback of an error (also VLMFAST_DEBUG=1)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        importlib.import_module(f"vlmfast.cli.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI; returns the process exit code.

    A user's mistake (a bad argument, a :class:`~vlmfast.errors.VlmfastError`, an OS
    error on a path the user gave) is one line on stderr and exit code 1, and the output
    folder the command created is removed; ``--debug`` (or ``VLMFAST_DEBUG=1``) shows
    the traceback instead. Any other exception is a bug and keeps its traceback.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as err:
        print(str(err), file=sys.stderr)
        return 1
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    debug = bool(args.debug) or os.environ.get("VLMFAST_DEBUG", "") not in ("", "0")
    fresh = new_outputs(args)
    try:
        return int(args.func(args) or 0)
    except (VlmfastError, OSError) as err:
        remove_outputs(fresh)
        if debug:
            raise
        print(f"vlmfast {args.command}: error: {one_line(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"vlmfast {args.command}: interrupted", file=sys.stderr)
        return 130
