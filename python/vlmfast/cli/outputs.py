"""What every command does around its library call: one-line errors, no half-written
output folder left behind, the data source's skip report printed and kept."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

OUTPUT_ARGS = ("out",)
"""Namespace attributes that name a command's output folder."""


def new_outputs(args: argparse.Namespace) -> list[Path]:
    """The output folders of ``args`` that do not exist yet (a failed command removes
    them). Resumable commands (``args.resumable``) keep what they wrote."""
    if getattr(args, "resumable", False):
        return []
    out = []
    for name in OUTPUT_ARGS:
        value = getattr(args, name, None)
        if isinstance(value, str | Path) and not Path(value).exists():
            out.append(Path(value))
    return out


def remove_outputs(paths: list[Path]) -> None:
    """Removes the folders (or files) a failed command created."""
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists():
            path.unlink(missing_ok=True)


def one_line(err: BaseException) -> str:
    """The error's message on one line (an OS error: its reason and path)."""
    if isinstance(err, OSError) and err.strerror and not _is_vlmfast(err):
        where = f": {err.filename}" if err.filename is not None else ""
        text = f"{err.strerror}{where}"
    else:
        text = str(err) or type(err).__name__
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def _is_vlmfast(err: BaseException) -> bool:
    from vlmfast.errors import VlmfastError

    return isinstance(err, VlmfastError)


def print_skips(report: Any, what: str = "data") -> None:
    """The source's skip report (counts per reason, first examples) on stderr, when it
    skipped anything."""
    if report is not None and report.n_bad:
        text = report.summary().replace("\n", "\n  ")
        print(f"{what}: {text}", file=sys.stderr)


def skips_json(report: Any) -> dict[str, Any] | None:
    """The skip report as JSON for a command's outputs (None: no report)."""
    return None if report is None else dict(report.as_dict())
