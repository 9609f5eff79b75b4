"""The arguments every ``vlmfast`` command shares, declared once, and their types.

A command declares its model, data, output, corruption and progress arguments with the
``add_*`` functions here, and its numbers with the ``type=`` validators, so the same
flag means, defaults and checks the same thing in every command. A bad value fails while
the arguments are parsed, before any model is loaded or anything is written, with one
line naming the flag and the value (``CliParser.error``).
"""

from __future__ import annotations

import argparse
import re
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from vlmfast.causal.core.corruption import CORRUPTIONS, SWAPS
from vlmfast.causal.core.limits import DEFAULT_MAX_ROWS
from vlmfast.causal.core.vocabulary import TOWERS as TOWERS  # re-exported: commands use A.TOWERS

DEVICES = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")
_HOOK = re.compile(r"^((image|text|joint)(\.[A-Za-z0-9_*?\[\]{}\-]+)+|[*?][A-Za-z0-9_.*?\-]*)$")


class UsageError(Exception):
    """A bad command line; its message is the one line ``vlmfast`` prints."""


class CliParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (no usage block): ``main`` prints
    it and exits 1, as for every other mistake of the user."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: error: {message} (see {self.prog} --help)")


# ---------------------------------------------------------------- value types


def _type(name: str, check: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse ``type=`` from ``check`` (raises ValueError with the reason)."""

    def parse(text: str) -> Any:
        try:
            return check(text)
        except (ValueError, TypeError) as err:
            raise argparse.ArgumentTypeError(f"{text!r}: {err}") from None

    parse.__name__ = name
    return parse


def _int(text: str, lo: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError("not an integer") from None
    if value < lo:
        raise ValueError(f"must be >= {lo}")
    return value


def _float(text: str, lo: float | None, hi: float | None, open_lo: bool = False) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError("not a number") from None
    if value != value:
        raise ValueError("not a number")
    if lo is not None and (value <= lo if open_lo else value < lo):
        raise ValueError(f"must be {'>' if open_lo else '>='} {lo}")
    if hi is not None and value > hi:
        raise ValueError(f"must be <= {hi}")
    return value


positive_int = _type("positive_int", lambda t: _int(t, 1))
"""An integer >= 1 (counts, sizes, steps)."""
nonnegative_int = _type("nonnegative_int", lambda t: _int(t, 0))
"""An integer >= 0 (null draws, workers; 0 = none)."""
nonnegative_float = _type("nonnegative_float", lambda t: _float(t, 0.0, None))
"""A float >= 0 (noise std, seconds)."""
positive_float = _type("positive_float", lambda t: _float(t, 0.0, None, open_lo=True))
"""A float > 0."""
fraction = _type("fraction", lambda t: _float(t, 0.0, 1.0, open_lo=True))
"""A float in (0, 1] (a faithfulness target, a sampling fraction)."""
probability = _type("probability", lambda t: _float(t, 0.0, 1.0))
"""A float in [0, 1] (thresholds, FDR, confidence levels)."""


def _model(text: str) -> str:
    from vlmfast.models.registry import SCHEMES

    scheme, colon, rest = text.partition(":")
    if not colon or scheme not in SCHEMES or not rest:
        raise ValueError(
            "a model spec is open_clip:<arch>, hf:<hub id or dir> or synthetic:tiny "
            "(vlmfast models lists them)"
        )
    if scheme == "synthetic" and rest != "tiny" and not Path(rest).is_dir():
        raise ValueError("synthetic models are synthetic:tiny or synthetic:<folder of synth train>")
    return text


model_spec = _type("model_spec", _model)
"""A model spec with a known source (the weights are only looked for when loading)."""


def _device(text: str) -> str:
    if not DEVICES.match(text):
        raise ValueError("a device is cpu, cuda, cuda:N or mps")
    return text


device = _type("device", _device)


def _data(text: str) -> str:
    from vlmfast.data import open_source
    from vlmfast.errors import InputError

    try:
        open_source(text)  # parses the spec and finds the files; reads no record
    except InputError as err:
        raise ValueError(str(err)) from None
    return text


data_spec = _type("data_spec", _data)
"""A data spec ``open_source`` understands (a folder, captions file, COCO json, shards,
``synthetic:n=...``)."""


def _eval_data(text: str) -> str:
    parts = text.split(":")
    if parts[0] != "synthetic" or not all(p.isdigit() for p in parts[2:5]) or len(parts) > 5:
        raise ValueError("evaluation pairs are synthetic[:split[:n[:seed[:max_objects]]]]")
    return text


eval_spec = _type("eval_spec", _eval_data)


def _hooks(text: str) -> list[str]:
    hooks = [h.strip() for h in text.split(",") if h.strip()]
    if not hooks:
        raise ValueError("no hook named")
    bad = [h for h in hooks if not _HOOK.match(h)]
    if bad:
        raise ValueError(
            f"{bad[0]!r} is not a hook name or glob (image.*, text.* or joint.*; "
            "see vlmfast models --hooks SPEC)"
        )
    return hooks


hook_list = _type("hook_list", _hooks)
"""Comma-separated hook names or globs of the image, text or joint hooks."""


def _hook(text: str) -> str:
    if "," in text:
        raise ValueError("one hook name, not a list")
    return _hooks(text)[0]


hook_name = _type("hook_name", _hook)
"""One hook name."""


def _out(text: str) -> Path:
    path = Path(text)
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                raise ValueError("a file, not a folder" if p == path else f"{p} is a file")
            break
    return path


out_dir = _type("out_dir", _out)
"""An output folder: it may exist (as a folder) or not; no part of it is a file."""


def existing_dir(what: str) -> Callable[[str], Path]:
    """A folder that must exist (``what``: what it should hold, for the message)."""

    def check(text: str) -> Path:
        path = Path(text)
        if not path.exists():
            raise ValueError(f"no such folder (expected {what})")
        if not path.is_dir():
            raise ValueError(f"not a folder (expected {what})")
        return path

    return _type("existing_dir", check)


def existing_file(what: str) -> Callable[[str], Path]:
    """A file that must exist."""

    def check(text: str) -> Path:
        path = Path(text)
        if not path.is_file():
            raise ValueError(f"no such file (expected {what})")
        return path

    return _type("existing_file", check)


def choice_list(choices: Sequence[str]) -> Callable[[str], list[str]]:
    """Comma-separated values, each one of ``choices``."""

    def check(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in choices]
        if bad or not items:
            raise ValueError(f"entries must be among {', '.join(choices)}")
        return items

    return _type("choice_list", check)


def int_list(text: str) -> list[int]:
    """Comma-separated integers."""
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: not comma-separated integers") from None


# ---------------------------------------------------------------- argument groups


def add_model_args(
    p: argparse.ArgumentParser, *, pretrained: bool = True, device_help: str = "torch device"
) -> None:
    """``--model`` (required), ``--pretrained`` and ``--device``."""
    p.add_argument(
        "--model",
        required=True,
        type=model_spec,
        help="model spec, e.g. synthetic:tiny, open_clip:ViT-B-32, hf:<dir>",
    )
    if pretrained:
        p.add_argument("--pretrained", default=None, help="weights tag or local checkpoint path")
    p.add_argument("--device", default="cpu", type=device, help=device_help)


def add_data_arg(
    p: argparse.ArgumentParser, *, default: str | None = None, help: str | None = None
) -> None:
    """``--data``: an image-caption source (required unless ``default``)."""
    p.add_argument(
        "--data",
        required=default is None,
        default=default,
        type=data_spec,
        help=help or "data spec, e.g. synthetic:n=8,seed=0, a folder or a captions file",
    )


def add_out_arg(p: argparse.ArgumentParser, help: str = "output directory") -> None:
    """``--out`` (required): a folder, created when the command writes."""
    p.add_argument("--out", required=True, type=out_dir, help=help)


def add_corruption_args(
    p: argparse.ArgumentParser,
    *,
    default: str,
    aliases: Sequence[str] = (),
    help: str = "",
    swaps: bool = False,
) -> None:
    """``--corrupt`` (one of ``vlmfast.causal`` corruptions, plus ``aliases``) and
    ``--noise-std``; with ``swaps``, also the concept swaps (``text-swap``, ``image-swap``,
    ``both-swap``) and ``--concept`` (the concept they change)."""
    choices = [*aliases, *CORRUPTIONS, *(SWAPS if swaps else ())]
    p.add_argument("--corrupt", default=default, choices=choices, help=help)
    if swaps:
        p.add_argument(
            "--concept",
            default=None,
            help="the concept the swaps change (e.g. red); with it, only pairs whose "
            "caption names it are used",
        )
    p.add_argument(
        "--noise-std", type=nonnegative_float, default=1.0, help="image-noise std (pixel units)"
    )


def add_progress_arg(p: argparse.ArgumentParser) -> None:
    """``--no-progress``."""
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def add_seed_arg(p: argparse.ArgumentParser, help: str = "random seed") -> None:
    p.add_argument("--seed", type=int, default=0, help=help)


def add_max_rows_arg(p: argparse.ArgumentParser, default: int | None = None) -> None:
    """``--max-rows``: batch rows per forward (default: ``vlmfast.causal``'s limit)."""
    p.add_argument(
        "--max-rows",
        type=positive_int,
        default=DEFAULT_MAX_ROWS if default is None else default,
        help="batch rows per forward",
    )


class DeprecatedAlias(argparse.Action):
    """An old flag name that still works, with a warning naming the new one."""

    def __init__(self, *args: Any, new: str, **kw: Any) -> None:
        self.new = new
        super().__init__(*args, **kw)

    def __call__(self, parser: Any, ns: Any, values: Any, option: str | None = None) -> None:
        msg = f"{option} is deprecated and will be removed; use {self.new}"
        warnings.warn(msg, DeprecationWarning, stacklevel=2)
        print(f"{parser.prog}: warning: {msg}", file=sys.stderr)
        setattr(ns, self.dest, values)


def split(text: str | Sequence[str]) -> list[str]:
    """``"a, b"`` -> ``["a", "b"]`` (a list passes through)."""
    if not isinstance(text, str):
        return list(text)
    return [t.strip() for t in text.split(",") if t.strip()]
