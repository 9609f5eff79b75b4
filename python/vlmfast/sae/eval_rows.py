"""Evaluation rows of a stored hook, streamed, each labelled with its token type.

``eval_batches(store, hook, rows=..., held_out=0.2)`` yields ``(x [B, d] float32, labels
[B] str)``: the hook's rows the ``rows`` option selects (:mod:`vlmfast.sae.rows`), from
the last ``held_out`` fraction of each store hook's rows (cut at a sample boundary), at
most ``max_rows`` of them. Token types (:data:`TOKEN_TYPES`): an image hook's ``cls``
(position 0 of a tower with a CLS token) and ``patch`` rows, a text hook's ``eot`` (each
caption's last row) and other ``token`` rows, and ``image_pooled`` / ``text_pooled`` for
rows of one-row-per-sample hooks (``pooled``, ``embed``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from vlmfast.errors import InputError
from vlmfast.sae.data import hook_parts
from vlmfast.sae.rows import _has_cls as has_cls  # same package
from vlmfast.sae.rows import check_rows, row_mask

TOKEN_TYPES = ("cls", "patch", "token", "eot", "image_pooled", "text_pooled")
"""The token-type labels of :func:`eval_batches`."""


@dataclass
class EvalRows:
    """Which rows of a store hook an evaluation reads."""

    hook: str
    rows: str
    """The ``rows`` option applied (see :mod:`vlmfast.sae.rows`)."""
    held_out: float
    """Fraction of each store hook's rows, at its end, read (1.0: every row)."""
    ranges: dict[str, tuple[int, int]]
    """Store hook -> raw rows ``[lo, hi)`` read."""
    max_rows: int | None = None
    """At most this many selected rows in all (None: no limit)."""


def _sample_start(store: object, part: str, row: int) -> int:
    """The first row at or after ``row`` that starts a new sample."""
    n = int(store.n_rows(part))  # type: ignore[attr-defined]
    if row <= 0 or row >= n:
        return max(0, min(row, n))
    stop = min(n, row + 65536)
    sample = store.index(part, row - 1, stop).sample  # type: ignore[attr-defined]
    new = np.flatnonzero(sample[1:] != sample[:-1])
    return row + int(new[0]) if new.size else stop


def plan_eval_rows(
    store: object,
    hook: str,
    rows: str = "all",
    held_out: float = 1.0,
    max_rows: int | None = None,
) -> EvalRows:
    """The rows an evaluation of ``hook`` reads (checks ``hook``, ``rows`` and ``held_out``).

    Raises ``HookNameError`` for a hook the store lacks and ``InputError`` for a ``rows``
    that does not apply to it or a ``held_out`` outside (0, 1].
    """
    if not 0.0 < held_out <= 1.0:
        raise InputError(f"held_out must be in (0, 1], got {held_out}")
    if max_rows is not None and max_rows < 1:
        raise InputError(f"max_rows must be >= 1, got {max_rows}")
    ranges = {}
    for part in hook_parts(store, hook):
        check_rows(store, part, rows)
        n = int(store.n_rows(part))  # type: ignore[attr-defined]
        lo = 0 if held_out >= 1.0 else _sample_start(store, part, round(n * (1 - held_out)))
        ranges[part] = (lo, n)
    return EvalRows(hook, rows, held_out, ranges, max_rows)


def token_types(store: object, part: str, lo: int, hi: int) -> np.ndarray:
    """The token type (:data:`TOKEN_TYPES`) of each raw row ``[lo, hi)`` of ``part``."""
    n = int(store.n_rows(part))  # type: ignore[attr-defined]
    stop = min(n, hi + 1)
    index = store.index(part, lo, stop)  # type: ignore[attr-defined]
    pos = index.position[: hi - lo].astype(np.int64)
    out = np.empty(hi - lo, dtype=object)
    if part.startswith("image."):
        first = "cls" if has_cls(store) else "patch"
        out[:] = "patch"
        out[pos == 0] = first
        out[pos < 0] = "image_pooled"
        return out.astype(str)
    sample = index.sample
    last = np.ones(hi - lo, dtype=bool)
    m = stop - lo - 1
    last[:m] = sample[:m] != sample[1 : m + 1]
    out[:] = "token"
    out[last] = "eot"
    out[pos < 0] = "text_pooled"
    return out.astype(str)


def eval_batches(
    store: object, plan: EvalRows, batch_size: int = 8192
) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
    """``(rows float32 [B, d], token types [B])`` of ``plan``, ``batch_size`` raw rows at a time."""
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    budget = plan.max_rows
    for part, (lo, hi) in plan.ranges.items():
        for start in range(lo, hi, batch_size):
            if budget is not None and budget <= 0:
                return
            stop = min(hi, start + batch_size)
            x = store.read(part, start, stop).float()  # type: ignore[attr-defined]
            labels = token_types(store, part, start, stop)
            mask = row_mask(store, part, plan.rows, start, stop)
            if mask is not None:
                x, labels = x[mask], labels[mask.numpy()]
            if budget is not None:
                x, labels = x[:budget], labels[:budget]
                budget -= x.shape[0]
            if x.shape[0]:
                yield x, labels
