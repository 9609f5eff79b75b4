"""Training batches from an activation store: the rows, their shuffling, the batch sequence.

One function (:func:`store_batches`) makes the batches of every SAE training run, held
in memory or streamed from disk, so the two give the very same batches:

- the rows are the hook's rows the ``rows`` option selects (:mod:`vlmfast.sae.rows`);
- an epoch cuts the hook's raw rows into windows of :data:`WINDOW_BYTES` (float32),
  visits the windows in a random order, shuffles the selected rows within each window,
  and cuts the concatenation into batches (the rows left over at the end of an epoch
  are dropped); one ``torch.Generator`` seeded with ``seed`` draws every permutation,
  epoch after epoch. A store whose rows fit in one window is plainly reshuffled every
  epoch;
- a store of at most :data:`IN_MEMORY_BYTES` (float32) is read once and held in memory;
  a larger one is read window by window (the next window on a background thread). Either
  way the windows hold the same rows, so the batches are bit-identical;
- ``start_batch`` resumes at an exact batch: the permutations of the skipped batches are
  drawn again (cheap), and no skipped window is read;
- ``hook`` is any hook in the store, or ``joint.embed`` (or ``joint.<point>``), which mixes
  ``image.<point>`` and ``text.<point>`` rows in every batch, in proportion to their counts
  (an SAE on CLIP's shared embedding space, for modality-invariance analysis);
- under data parallelism each rank reads only its own contiguous slice of the raw rows
  (disjoint ranges), with ``batch_size / world`` rows per step;
- several hooks that hold the same rows (hooks of one tower with the same row count, e.g.
  the residual stream at several blocks) are read side by side: a window reads the same
  raw rows of every hook, selects and shuffles them once, and a batch is the hooks'
  columns side by side (``[batch, sum of widths]``; :attr:`BatchPlan.widths`). The window
  is that of the widest hook, so each hook gets the very rows (and order) it would get
  alone when the hooks have equal widths (or the store fits in one window).
"""

from __future__ import annotations

from collections.abc import Generator, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from vlmfast.errors import HookNameError, InputError
from vlmfast.sae.rows import DEFAULT_ROWS, check_rows, count_rows, row_mask

IN_MEMORY_BYTES = 2 << 30
"""A hook whose rows (float32, this rank's share) fit in this many bytes is held in memory."""
WINDOW_BYTES = 256 << 20
"""Raw rows (float32) per shuffling window: what a streamed run holds at a time."""


def hook_parts(store: Any, hook: str) -> list[str]:
    """The store hooks a (possibly ``joint.``) hook name reads."""
    if hook.startswith("joint."):
        point = hook[len("joint.") :]
        parts = [f"image.{point}", f"text.{point}"]
        missing = [p for p in parts if p not in store.hooks]
        if missing:
            raise HookNameError(
                f"{hook} needs {parts} in the store; missing {missing} (has {store.hooks})"
            )
        return parts
    if hook not in store.hooks:
        raise HookNameError(f"hook {hook!r} is not in the store; it holds {store.hooks}")
    return [hook]


def aligned_parts(store: Any, hooks: Sequence[str]) -> list[tuple[str, ...]]:
    """The store hooks read side by side: for each part of the first hook, that part of
    every hook (same tower, same row count). Raises ``InputError`` naming two hooks that
    do not hold the same rows, ``HookNameError`` for a hook not in the store."""
    if not hooks:
        raise InputError("no hook to train on: name at least one hook")
    per_hook = [hook_parts(store, h) for h in hooks]
    first = per_hook[0]
    for hook, parts in zip(hooks[1:], per_hook[1:]):
        same = len(parts) == len(first) and all(
            p.split(".", 1)[0] == q.split(".", 1)[0] and store.n_rows(p) == store.n_rows(q)
            for p, q in zip(parts, first)
        )
        if not same:
            raise InputError(
                f"hooks {hooks[0]} and {hook} do not hold the same rows (tower or row count "
                "differ): they cannot be read side by side; train them in separate passes"
            )
    return [tuple(parts[i] for parts in per_hook) for i in range(len(first))]


def hook_width(store: Any, hook: str) -> int:
    """Width of ``hook`` (a ``joint.`` hook: its parts' common width)."""
    widths = {store.width(p) for p in hook_parts(store, hook)}
    if len(widths) != 1:
        raise InputError(f"{hook}: the image and text rows have different widths {sorted(widths)}")
    return widths.pop()


def hook_rows(store: Any, hook: str) -> int:
    """Raw rows of ``hook`` in the store (every row, whatever ``rows`` selects)."""
    return sum(store.n_rows(p) for p in hook_parts(store, hook))


def window_rows(width: int) -> int:
    """Raw rows per shuffling window of a hook of ``width``."""
    return max(1, WINDOW_BYTES // (4 * int(width)))


@dataclass
class PartPlan:
    """One store hook's share of the batches (this rank's raw rows ``[lo, hi)``)."""

    part: str
    lo: int
    hi: int
    window: int
    counts: list[int]
    """Selected rows in each window."""
    share: int
    """Rows of each batch drawn from this part."""
    columns: tuple[str, ...] = ()
    """The store hooks read side by side (one per hook of the run; ``part`` first);
    empty: ``part`` alone."""

    @property
    def reads(self) -> tuple[str, ...]:
        return self.columns or (self.part,)

    @property
    def n_selected(self) -> int:
        return sum(self.counts)


@dataclass
class BatchPlan:
    """Everything about a run's batches that is known before a row is read."""

    store: Any
    hook: str
    rows: str
    batch_size: int
    parts: list[PartPlan]
    hooks: tuple[str, ...] = ()
    """Every hook of the batches (``hook`` first); empty: ``hook`` alone."""
    widths: tuple[int, ...] = ()
    """Columns of each hook in a batch, in ``hooks`` order."""

    @property
    def n_selected(self) -> int:
        """Selected rows (this rank's)."""
        return sum(p.n_selected for p in self.parts)

    def nbytes(self) -> int:
        """float32 bytes of this rank's raw rows."""
        return sum(
            (p.hi - p.lo) * 4 * sum(int(self.store.width(c)) for c in p.reads) for p in self.parts
        )


def _split_batch(sizes: list[int], batch_size: int) -> list[int]:
    total = sum(sizes)
    shares = [max(1, round(batch_size * s / total)) if s else 0 for s in sizes]
    shares[-1] = batch_size - sum(shares[:-1])
    if any(s < 0 for s in shares) or (shares[-1] == 0 and sizes[-1]):
        raise InputError(f"batch_size {batch_size} is too small to mix {len(sizes)} hooks")
    return shares


def plan_batches(
    store: Any,
    hook: str | Sequence[str],
    batch_size: int,
    *,
    rows: str = DEFAULT_ROWS,
    rank: int = 0,
    world_size: int = 1,
) -> BatchPlan:
    """Checks ``hook``, ``rows`` and ``batch_size`` against the store; reads only its index.

    ``hook`` may list several hooks that hold the same rows (:func:`aligned_parts`): their
    batches are read side by side. Raises ``InputError`` naming the store, hook, rows and
    batch size when a part has fewer selected rows than its share of one batch.
    """
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    if world_size > 1 and batch_size % world_size:
        raise InputError(f"batch_size {batch_size} must divide by the {world_size} ranks")
    hooks = (hook,) if isinstance(hook, str) else tuple(hook)
    aligned = aligned_parts(store, hooks)
    for columns in aligned:
        for p in columns:
            check_rows(store, p, rows)
    local = batch_size // world_size
    plans = []
    for columns in aligned:
        p = columns[0]
        n = int(store.n_rows(p))
        lo, hi = n * rank // world_size, n * (rank + 1) // world_size
        window = min(window_rows(store.width(c)) for c in columns)
        counts = count_rows(store, p, rows, lo, hi, window)
        plans.append(PartPlan(p, lo, hi, window, counts, 0, columns if len(hooks) > 1 else ()))
    selected = [p.n_selected for p in plans]
    total = sum(selected)
    shares = _split_batch(selected, local) if len(plans) > 1 and total > 0 else [local]
    for plan, share in zip(plans, shares):
        plan.share = share
        if plan.n_selected < share:
            where = f" (rank {rank} of {world_size})" if world_size > 1 else ""
            of = f" (its share of {batch_size})" if share != batch_size else ""
            raise InputError(
                f"store {store.path}: hook {plan.part} has {plan.n_selected} rows with "
                f"rows={rows!r}{where}, fewer than one batch of {share}{of}; lower "
                "--batch-size, cache more samples, or pick other --rows"
            )
    widths = tuple(hook_width(store, h) for h in hooks)
    return BatchPlan(store, hooks[0], rows, batch_size, plans, hooks, widths)


# ---------------------------------------------------------------- rows of a window


def read_window(
    store: Any, part: str, rows: str, start: int, stop: int, columns: Sequence[str] = ()
) -> torch.Tensor:
    """The selected rows among raw rows ``[start, stop)`` of ``part``, as float32.

    ``columns``: store hooks holding the same rows as ``part`` (``part`` among them), each
    read once and set side by side in that order; the selection is ``part``'s.
    """
    if len(columns) > 1:
        x = torch.cat([store.read(c, start, stop).float() for c in columns], dim=1)
    else:
        x = store.read(part, start, stop).float()
    mask = row_mask(store, part, rows, start, stop)
    return x if mask is None else x[mask]


def _bounds(plan: PartPlan, w: int) -> tuple[int, int]:
    start = plan.lo + w * plan.window
    return start, min(plan.hi, start + plan.window)


class _InMemory:
    """Every window's selected rows, read once."""

    def __init__(self, store: Any, rows: str, plan: PartPlan) -> None:
        parts = [
            read_window(store, plan.part, rows, *_bounds(plan, w), plan.columns)
            for w in range(len(plan.counts))
        ]
        self.rows = torch.cat(parts) if len(parts) > 1 else parts[0]
        self.offsets = [0]
        for c in plan.counts:
            self.offsets.append(self.offsets[-1] + c)

    def windows(self, order: list[int]) -> Iterator[torch.Tensor]:
        for w in order:
            yield self.rows[self.offsets[w] : self.offsets[w + 1]]

    def close(self) -> None:
        pass


class _Streamed:
    """Windows read from the store when needed, the next one on a background thread."""

    def __init__(self, store: Any, rows: str, plan: PartPlan) -> None:
        self.store, self.rows, self.plan = store, rows, plan
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="vlmfast-sae-window")

    def _read(self, w: int) -> torch.Tensor:
        plan = self.plan
        return read_window(self.store, plan.part, self.rows, *_bounds(plan, w), plan.columns)

    def windows(self, order: list[int]) -> Iterator[torch.Tensor]:
        ahead: Future[torch.Tensor] | None = None
        for i, w in enumerate(order):
            current = ahead.result() if ahead is not None else self._read(w)
            ahead = self.pool.submit(self._read, order[i + 1]) if i + 1 < len(order) else None
            yield current

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------- the batch sequence


def _epoch(
    source: _InMemory | _Streamed, plan: PartPlan, gen: torch.Generator, skip_rows: int
) -> Iterator[torch.Tensor]:
    """One epoch's batches after its first ``skip_rows`` rows (a multiple of a batch).

    ``gen`` draws the window order, then each visited window's permutation, in that order.
    """
    counts = plan.counts
    order = torch.randperm(len(counts), generator=gen).tolist() if len(counts) > 1 else [0]
    order = [w for w in order if counts[w]]
    first, seen = 0, 0  # windows the skipped batches used up: permutations drawn, not read
    while first < len(order) and seen + counts[order[first]] <= skip_rows:
        torch.randperm(counts[order[first]], generator=gen)
        seen += counts[order[first]]
        first += 1
    drop = skip_rows - seen
    carry: torch.Tensor | None = None
    for w, data in zip(order[first:], source.windows(order[first:])):
        perm = torch.randperm(counts[w], generator=gen)
        rows = data[perm[drop:]] if drop else data[perm]
        drop = 0
        if carry is not None and carry.shape[0]:
            rows = torch.cat([carry, rows])
        usable = rows.shape[0] // plan.share * plan.share
        for b in range(0, usable, plan.share):
            yield rows[b : b + plan.share]
        carry = rows[usable:]


def _part_batches(
    source: _InMemory | _Streamed, plan: PartPlan, seed: int, start_batch: int
) -> Iterator[torch.Tensor]:
    """Endless batches of one part, epoch after epoch, from batch ``start_batch`` on."""
    per_epoch = plan.n_selected // plan.share
    gen = torch.Generator().manual_seed(seed)
    epoch, skip = divmod(start_batch, per_epoch)
    for _ in range(epoch):  # draws a skipped epoch's permutations, reads nothing
        for _batch in _epoch(source, plan, gen, plan.n_selected):
            pass
    while True:
        yield from _epoch(source, plan, gen, skip * plan.share)
        skip = 0


def held_in_memory(plan: BatchPlan) -> bool:
    """Whether :func:`iterate_batches` holds the rows in memory (else streams them)."""
    return plan.nbytes() <= IN_MEMORY_BYTES


def iterate_batches(
    plan: BatchPlan, *, seed: int = 0, start_batch: int = 0, in_memory: bool | None = None
) -> Generator[torch.Tensor, None, None]:
    """Endless float32 batches of a :func:`plan_batches` plan (see the module docstring).

    ``in_memory`` None: :func:`held_in_memory`. The batches do not depend on it.
    """
    if in_memory is None:
        in_memory = held_in_memory(plan)
    kind = _InMemory if in_memory else _Streamed
    sources = [kind(plan.store, plan.rows, p) for p in plan.parts]
    streams = [_part_batches(s, p, seed, start_batch) for s, p in zip(sources, plan.parts)]
    try:
        if len(streams) == 1:
            yield from streams[0]
            return
        while True:
            yield torch.cat([next(s) for s in streams])
    finally:
        for source in sources:
            source.close()


def store_batches(
    store: Any,
    hook: str | Sequence[str],
    batch_size: int,
    *,
    rows: str = DEFAULT_ROWS,
    seed: int = 0,
    start_batch: int = 0,
    rank: int = 0,
    world_size: int = 1,
    in_memory: bool | None = None,
) -> Generator[torch.Tensor, None, None]:
    """Endless float32 batches of ``hook``'s ``rows`` (``joint.*`` mixes image and text rows).

    With ``world_size > 1`` this rank yields ``batch_size // world_size`` rows per step,
    drawn only from its own contiguous ``1/world_size`` of every hook's rows. The
    arguments are checked here, before the first batch is asked for.
    """
    plan = plan_batches(store, hook, batch_size, rows=rows, rank=rank, world_size=world_size)
    return iterate_batches(plan, seed=seed, start_batch=start_batch, in_memory=in_memory)
