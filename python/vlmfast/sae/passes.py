"""Several hooks in one run: which hooks share a pass over the store, and where each goes.

:func:`vlmfast.sae.train_sae` trains one SAE per hook (x each sweep combination). Hooks
that hold the same rows (every part in the same tower with the same row count: e.g. the
residual stream at several blocks of one tower, or ``joint.<a>`` and ``joint.<b>``) are
trained in one pass: each window of raw rows is read once for all of them, selected and
shuffled once, so every step feeds each hook's SAE the same row indices
(:mod:`vlmfast.sae.data`). Hooks that hold different rows (an image and a text hook, a
token hook and a pooled one) cannot share batches: they are trained in separate passes,
one after the other, in the order they are first named, each pass with its own
default length and batch (what it would get alone).

A shared pass holds a window of every hook at once (at most ``len(hooks)`` x
``WINDOW_BYTES``, twice that when streaming) and is held in memory only when all its
hooks fit in ``IN_MEMORY_BYTES`` together. With ``nan_policy="skip"`` a row with a
NaN/Inf in any hook of the pass is dropped for all of them (they keep the same rows).

Layout: one hook writes ``OUT/`` (one SAE) or ``OUT/<name>/`` per SAE of a sweep, as
before; several hooks write ``OUT/<hook>/`` (or ``OUT/<hook>/<name>/`` in a sweep), or
the folder a caller names for a hook (``hook_dirs``); ``OUT/metrics.jsonl`` holds every
SAE's lines (``sae``: ``<hook>`` or ``<hook>/<name>`` with several hooks).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import torch

from vlmfast.errors import InputError
from vlmfast.sae.checkpoint import save_training_checkpoint
from vlmfast.sae.data import hook_parts
from vlmfast.sae.files import mark_complete, mark_incomplete


def _rows_key(store: Any, hook: str) -> tuple[tuple[str, int], ...]:
    return tuple((p.split(".", 1)[0], int(store.n_rows(p))) for p in hook_parts(store, hook))


def hook_passes(store: Any, hooks: Sequence[str]) -> list[list[str]]:
    """``hooks`` grouped into passes: hooks holding the same rows share one (see above).

    Raises ``HookNameError`` naming a hook that is not in the store.
    """
    passes: dict[tuple[tuple[str, int], ...], list[str]] = {}
    for hook in hooks:
        passes.setdefault(_rows_key(store, hook), []).append(hook)
    return list(passes.values())


def hook_folders(
    out: Path, hooks: Sequence[str], hook_dirs: Mapping[str, str | Path] | None = None
) -> dict[str, Path]:
    """Each hook's folder: ``out`` for a run of one hook, else ``out/<hook>``, unless
    ``hook_dirs`` names it."""
    dirs = {h: Path(d) for h, d in (hook_dirs or {}).items()}
    unknown = sorted(set(dirs) - set(hooks))
    if unknown:
        raise InputError(f"hook_dirs names {unknown[0]}, which is not a hook of the run")
    if len(hooks) == 1:
        return {hooks[0]: dirs.get(hooks[0], out)}
    return {h: dirs.get(h, out / h) for h in hooks}


def sae_name(hook: str, point: str, *, several_hooks: bool, several_points: bool) -> str:
    """An SAE's name in the metric lines and the result (see the module docstring)."""
    if not several_hooks:
        return point
    return f"{hook}/{point}" if several_points else hook


class ColumnFeed:
    """A trainer that steps on its hook's columns of a batch of several hooks side by side.

    Stands in for the trainer in :func:`vlmfast.sae.train` (every other attribute is the
    trainer's own); the columns are copied into a contiguous tensor, so the step sees the
    very tensor it would see alone.
    """

    def __init__(self, trainer: Any, lo: int, hi: int) -> None:
        self._trainer, self._lo, self._hi = trainer, lo, hi

    def step(self, x: torch.Tensor) -> Any:
        """The trainer's step on columns ``[lo, hi)`` of ``x``."""
        return self._trainer.step(x[:, self._lo : self._hi].contiguous())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._trainer, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        else:
            setattr(self._trainer, name, value)


def column_feeds(trainers: Sequence[Any], widths: Sequence[int], per_hook: int) -> list[Any]:
    """``trainers`` (``per_hook`` per hook, hooks in ``widths`` order) fed their columns;
    the trainers themselves when there is one hook."""
    if len(widths) == 1:
        return list(trainers)
    bounds, lo = [], 0
    for width in widths:
        bounds.append((lo, lo + width))
        lo += width
    return [ColumnFeed(t, *bounds[i // per_hook]) for i, t in enumerate(trainers)]


class RunOutputs:
    """A run's folders (rank 0 only): marked incomplete until :meth:`finish`, and its
    ``metrics.jsonl``."""

    def __init__(self, out: Path, targets: Iterable[Path], *, write: bool, resume: bool) -> None:
        self.folders = sorted({out, *targets})
        self.write = write
        self.metrics: TextIO | None = None
        if write:
            for folder in self.folders:
                mark_incomplete(folder)
            self.metrics = (out / "metrics.jsonl").open("a" if resume else "w")

    def log(self, logs: Iterable[Any]) -> None:
        """Appends the :class:`vlmfast.sae.TrainLog` lines."""
        if self.metrics is not None:
            for log in logs:
                self.metrics.write(json.dumps(log.to_json()) + "\n")
            self.metrics.flush()

    def save(self, trainers: Sequence[Any], targets: Sequence[Path], state: bool = True) -> None:
        """Each trainer's SAE (with ``trainer_state.pt`` when ``state``) into its target."""
        if not self.write:
            return
        for trainer, target in zip(trainers, targets, strict=True):
            if state:
                save_training_checkpoint(trainer, target)
            else:
                trainer.sae.save(target)

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()

    def finish(self) -> None:
        """Removes the incomplete markers (every pass finished)."""
        if self.write:
            for folder in self.folders:
                mark_complete(folder)
