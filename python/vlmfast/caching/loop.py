"""The cache loop: forward batches in, store rows out, committed every few seconds.

After each committed batch the store's ``progress.samples_done`` records how many
source records are in it, so a re-run skips that many and continues: a run killed at
any moment and re-run yields the same store as an uninterrupted one. Writing overlaps
the next forward (one writer thread writing the batches in order; the Rust writer
releases the GIL).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlmfast.caching.config import CacheConfig
from vlmfast.caching.crash import Crash
from vlmfast.caching.forward import iter_forward
from vlmfast.caching.labels import labels_of
from vlmfast.caching.setup import CacheSetup, tower_geometry
from vlmfast.errors import InputError, StoreError
from vlmfast.store.activation_store import ActivationStore
from vlmfast.store.schema import (
    ATTR_BOXES,
    ATTR_CONCEPTS,
    ATTR_DATASET,
    ATTR_HOOKS,
    ATTR_MODEL,
    ATTR_PROGRESS,
    CONCEPT_CAPTION_LABELS,
    CONCEPT_NAMES,
    DEFAULT_IMAGE_BASIS,
    PROGRESS_FINISHED,
    PROGRESS_LAST_SAMPLE,
    PROGRESS_SAMPLES_DONE,
)

Rows = dict[str, tuple[torch.Tensor, dict[str, torch.Tensor]]]
"""Per store hook: the batch's rows and their index columns."""


def cache_loop(
    cfg: CacheConfig,
    setup: CacheSetup,
    path: Path,
    store: ActivationStore | None,
    done: int,
    *,
    select: Callable[[int], bool] | None = None,
    user_attrs: dict[str, Any] | None = None,
    show_progress: bool = True,
) -> tuple[ActivationStore | None, int]:
    """Caches the (selected) batches after record ``done`` into ``path``; returns the
    store (None when no batch was selected) and the records read.

    ``store`` is the store at ``path`` opened for appending (None: create it at the
    first written batch). Commits every ``commit_seconds`` and once at the end,
    with ``progress = {"samples_done": records through the last written batch}``
    (``finished`` at the end). One writer thread writes the batches in order while
    the forward goes on (up to ``write_queue_bytes`` of rows ahead of it), so a
    commit's fsyncs never stall the forward.
    """
    crash = Crash(cfg.crash_at)
    if store is not None:
        store._crash_hook = crash
    bar = _Progress(cfg, done, show_progress)
    last_commit = time.perf_counter()
    consumed = done
    # the sample id of the last record done: a resume passes over the records up
    # to it without decoding them (stores cached before it was kept lack it)
    after = (
        store.attrs[ATTR_PROGRESS].get(PROGRESS_LAST_SAMPLE) if store is not None and done else None
    )
    last_sample = after
    local = 0
    batch_labels = labels_of(setup.source, setup.pair)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="vlmfast-cache-writer") as pool:
        queue = _WriteQueue(pool, cfg.write_queue_bytes)
        for _g, batch, rows, consumed in iter_forward(
            setup, cfg, skip=done, select=select, after=after
        ):
            bar.read(len(batch))
            last_sample = batch[-1].sample_id
            if rows is None:
                continue
            labels = batch_labels(batch)
            if store is None:
                store = create_store(cfg, path, setup, rows, labels, user_attrs)
                store._crash_hook = crash
            size = sum(r.numel() * r.element_size() for r, _ in rows.values())
            queue.make_room(size)
            now = time.perf_counter()
            commit = cfg.commit_seconds <= 0 or now - last_commit >= cfg.commit_seconds
            if commit:
                last_commit = now
            progress = {PROGRESS_SAMPLES_DONE: consumed, PROGRESS_LAST_SAMPLE: last_sample}
            queue.submit(size, store, rows, labels, batch, progress, commit, cfg, crash, str(local))
            local += 1
            bar.wrote(rows, size)
        queue.wait()
    bar.close()
    if store is not None:
        store.commit(
            {
                PROGRESS_SAMPLES_DONE: consumed,
                PROGRESS_LAST_SAMPLE: last_sample,
                PROGRESS_FINISHED: True,
            }
        )
    return store, consumed


class _Progress:
    """The progress bar of a cache loop: records read, rows and bytes written per second."""

    def __init__(self, cfg: CacheConfig, done: int, show: bool) -> None:
        from tqdm import tqdm

        self.bar = tqdm(
            total=cfg.limit,
            initial=done,
            unit="sample",
            disable=not (cfg.progress and show),
            desc=f"cache {cfg.out.name}",
            dynamic_ncols=True,
        )
        self.started = time.perf_counter()
        self.rows = 0
        self.bytes = 0

    def read(self, n: int) -> None:
        self.bar.update(n)

    def wrote(self, rows: Rows, size: int) -> None:
        self.rows += sum(int(r.shape[0]) for r, _ in rows.values())
        self.bytes += size
        dt = max(time.perf_counter() - self.started, 1e-9)
        self.bar.set_postfix_str(f"{self.rows / dt:,.0f} rows/s {self.bytes / dt / 1e6:,.1f} MB/s")

    def close(self) -> None:
        self.bar.close()


class _WriteQueue:
    """Batches handed to one writer thread, written in order; at most ``limit`` bytes of
    rows wait (more: wait for the oldest write first)."""

    def __init__(self, pool: ThreadPoolExecutor, limit: int) -> None:
        self.pool = pool
        self.limit = limit
        self.pending: deque[tuple[Future[Any], int]] = deque()  # writes in flight, with bytes
        self.in_flight = 0
        self.failed: list[BaseException] = []

    def make_room(self, size: int) -> None:
        """Waits for the oldest writes until a batch of ``size`` bytes fits in the queue."""
        while self.pending and (self.pending[0][0].done() or self.in_flight + size > self.limit):
            done_write, done_size = self.pending.popleft()
            done_write.result()  # the writer is behind: wait for the oldest write
            self.in_flight -= done_size

    def submit(self, size: int, *args: Any) -> None:
        """Queues ``_write(*args)`` for a batch of ``size`` bytes of rows (after
        :meth:`make_room`)."""
        self.pending.append((self.pool.submit(_write_in_order, self.failed, *args), size))
        self.in_flight += size

    def wait(self) -> None:
        """Waits for every queued write (raising the first failure)."""
        for write, _ in self.pending:
            write.result()


def create_store(
    cfg: CacheConfig,
    path: Path,
    setup: CacheSetup,
    rows: Rows,
    labels: Any,
    user_attrs: dict[str, Any] | None = None,
) -> ActivationStore:
    """The store at ``path`` for the rows of the run's first written batch."""
    ident = setup.identity
    missing = [h for h in ident[ATTR_HOOKS] if h not in rows]
    if missing:
        raise InputError(f"the first batch produced no rows for {missing} (no images or captions?)")
    widths = {h: int(rows[h][0].shape[1]) for h in ident[ATTR_HOOKS]}
    concepts = (list(labels.names), list(labels.kinds)) if labels is not None else None
    return ActivationStore.create(
        path,
        widths,
        dtype=cfg.dtype,
        chunk_rows=cfg.chunk_rows,
        compression=cfg.compression,
        model=ident[ATTR_MODEL],
        dataset=ident[ATTR_DATASET],
        positions=cfg.positions,
        concepts=concepts,
        attrs=user_attrs,
        overwrite=cfg.overwrite or path != cfg.out,
        image_basis=labels.image_basis if labels is not None else DEFAULT_IMAGE_BASIS,
        towers=tower_geometry(setup.pair),
        boxes=getattr(labels, "box_attrs", None),
    )


def _write_in_order(failed: list[BaseException], *args: Any) -> None:
    """``_write``, unless an earlier write failed: batches are never written past a gap."""
    if failed:
        raise StoreError("an earlier write of this run failed") from failed[0]
    try:
        _write(*args)
    except BaseException as err:
        failed.append(err)
        raise


def _write(
    store: ActivationStore,
    rows: Rows,
    labels: Any,
    batch: Sequence[Any],
    progress: dict[str, Any],
    commit: bool,
    cfg: CacheConfig,
    crash: Crash,
    batch_no: str,
) -> None:
    crash.current = batch_no
    kw: dict[str, Any] = {}
    attrs = store.attrs
    if labels is not None and attrs.get(ATTR_CONCEPTS) is not None:
        names = attrs[ATTR_CONCEPTS][CONCEPT_NAMES]
        if list(labels.names) != names:
            raise InputError("the source's concept names changed between batches")
        kw = {
            "labels": np.asarray(labels.image.matrix, dtype=bool),
            "label_samples": np.array([r.sample_id for r in batch], dtype=np.int64),
        }
        if attrs[ATTR_CONCEPTS].get(CONCEPT_CAPTION_LABELS):
            kw["caption_labels"] = np.asarray(labels.caption.matrix, dtype=bool)
        if attrs.get(ATTR_BOXES) and getattr(labels, "boxes", None) is not None:
            kw["boxes"] = labels.boxes
    store.append_many(
        {h: r for h, (r, _) in rows.items()},
        {h: idx for h, (_, idx) in rows.items()},
        skip_nonfinite=cfg.skip_nonfinite,
        commit=False,
        **kw,
    )
    crash("appended")
    if commit:
        store.commit(progress)
        crash("committed")
