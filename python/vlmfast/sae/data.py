"""Training batches from an activation store: endless shuffled epochs, joint hooks, DDP ranges.

- ``hook`` is any hook in the store, or ``joint.embed`` (or ``joint.<point>``), which mixes
  ``image.<point>`` and ``text.<point>`` rows in every batch, in proportion to their counts
  (an SAE on CLIP's shared embedding space, for modality-invariance analysis).
- One process streams the store's shuffled batches (``ActivationStore.batches``), epoch
  after epoch with a new permutation each, and resumes at an exact batch.
- Under data parallelism each rank reads only its own contiguous slice of the rows
  (disjoint ranges), shuffled within windows, with ``batch_size / world`` rows per step.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from typing import Any

import torch

from vlmfast.errors import HookNameError, InputError


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


def hook_width(store: Any, hook: str) -> int:
    widths = {store.width(p) for p in hook_parts(store, hook)}
    if len(widths) != 1:
        raise InputError(f"{hook}: the image and text rows have different widths {sorted(widths)}")
    return widths.pop()


def hook_rows(store: Any, hook: str) -> int:
    return sum(store.n_rows(p) for p in hook_parts(store, hook))


def _split_batch(sizes: list[int], batch_size: int) -> list[int]:
    total = sum(sizes)
    shares = [max(1, round(batch_size * s / total)) if s else 0 for s in sizes]
    shares[-1] = batch_size - sum(shares[:-1])
    if any(s < 0 for s in shares) or (shares[-1] == 0 and sizes[-1]):
        raise InputError(f"batch_size {batch_size} is too small to mix {len(sizes)} hooks")
    return shares


def _endless(
    store: Any, hook: str, batch_size: int, seed: int, start_batch: int
) -> Iterator[torch.Tensor]:
    per_epoch = store.n_rows(hook) // batch_size
    if per_epoch == 0:
        raise InputError(
            f"hook {hook} has {store.n_rows(hook)} rows, fewer than one batch of {batch_size}"
        )
    epoch, start = divmod(start_batch, per_epoch)
    while True:
        yield from store.batches(
            hook,
            batch_size,
            shuffle=True,
            seed=seed,
            epoch=epoch,
            start_batch=start,
            drop_last=True,
            dtype=torch.float32,
        )
        epoch, start = epoch + 1, 0


def _range_batches(
    store: Any,
    hook: str,
    batch_size: int,
    seed: int,
    start: int,
    stop: int,
    skip: int,
    window: int = 65536,
) -> Iterator[torch.Tensor]:
    """Shuffled batches of rows ``[start, stop)`` only, endless (new order per epoch)."""
    n = stop - start
    if n < batch_size:
        raise InputError(
            f"hook {hook}: this rank's {n} rows are fewer than one batch of {batch_size}"
        )
    epoch = 0
    produced = 0
    while True:
        gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        windows = torch.randperm(-(-n // window), generator=gen).tolist()
        carry: torch.Tensor | None = None
        for w in windows:
            lo = start + w * window
            rows = store.read(hook, lo, min(stop, lo + window)).float()
            rows = rows[torch.randperm(rows.shape[0], generator=gen)]
            if carry is not None:
                rows = torch.cat([carry, rows])
            usable = rows.shape[0] // batch_size * batch_size
            for b in range(0, usable, batch_size):
                if produced >= skip:
                    yield rows[b : b + batch_size]
                produced += 1
            carry = rows[usable:]
        epoch += 1


def store_batches(
    store: Any,
    hook: str,
    batch_size: int,
    *,
    seed: int = 0,
    start_batch: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> Generator[torch.Tensor, None, None]:
    """Endless float32 batches of ``hook`` (``joint.*`` mixes image and text rows).

    With ``world_size > 1`` this rank yields ``batch_size // world_size`` rows per step,
    drawn only from its own contiguous ``1/world_size`` of every hook's rows.
    """
    parts = hook_parts(store, hook)
    if world_size > 1 and batch_size % world_size:
        raise InputError(f"batch_size {batch_size} must divide by the {world_size} ranks")
    local = batch_size // world_size
    sizes = [store.n_rows(p) for p in parts]
    shares = _split_batch(sizes, local) if len(parts) > 1 else [local]
    streams = []
    for p, n, share in zip(parts, sizes, shares):
        if world_size > 1:
            lo, hi = n * rank // world_size, n * (rank + 1) // world_size
            streams.append(_range_batches(store, p, share, seed, lo, hi, start_batch))
        else:
            streams.append(_endless(store, p, share, seed, start_batch))
    if len(streams) == 1:
        yield from streams[0]
        return
    while True:
        yield torch.cat([next(s) for s in streams])
