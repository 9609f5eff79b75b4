"""``run_cache``: caching activations of both towers over an image-text source into a
store, resumably.

The source is read in a fixed order and cut into batches of ``batch_size``
records (batch ``g`` holds records ``g*batch_size ...``); after each committed
batch the store's ``progress.samples_done`` records how many source records
are in it. A re-run with the same model, data, hooks and positions skips that
many records and continues, so a run killed at any moment and re-run yields the
same store as an uninterrupted one (``caching.loop``).

Under ``torchrun`` (``WORLD_SIZE`` > 1) or inside an initialised
``torch.distributed`` group, the batches are split across ranks: see
``vlmfast.caching.ranks``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable

from vlmfast.caching.config import CacheConfig, parts_dir
from vlmfast.caching.loop import cache_loop
from vlmfast.caching.ranks import run_ranks
from vlmfast.caching.setup import check_same, setup_cache
from vlmfast.caching.skip_report import (
    SKIP_REPORT_FILE as SKIP_REPORT_FILE,
)
from vlmfast.caching.skip_report import read_skip_report as read_skip_report
from vlmfast.caching.skip_report import report_skipped
from vlmfast.errors import InputError, StoreError
from vlmfast.store.activation_store import ActivationStore, read_attrs
from vlmfast.store.schema import ATTR_PROGRESS, PROGRESS_FINISHED, PROGRESS_SAMPLES_DONE


def _distributed(cfg: CacheConfig) -> tuple[int, int, bool]:
    """(rank, world size, whether this call joined the group) of a torchrun launch."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), False
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, False
    from vlmfast.process_group import join_process_group

    rank, world = join_process_group(cfg.device)
    return rank, world, True


def run_cache(cfg: CacheConfig, *, log: Callable[[str], None] = print) -> ActivationStore:
    """Caches (or resumes caching) activations; returns the store, open read-only.

    Under ``torchrun`` (or in an initialised ``torch.distributed`` group) every rank
    calls this with the same config; the ranks split the batches and every rank
    returns the finished store.

    Returns:
        The finished store, open read-only.

    Raises:
        InputError: a bad config (flag named), or the source has no records to cache.
        StoreError: ``cfg.out`` holds another cache or the parts of an unfinished
            multi-rank one (pass ``overwrite``).
    """
    rank, world, joined = _distributed(cfg)
    if world <= 1:
        return _run_single(cfg, log)
    from vlmfast.process_group import leave_process_group

    ok = False
    try:
        run_ranks(cfg, rank, world, log if rank == 0 else (lambda _: None))
        ok = True
    finally:
        if joined:
            leave_process_group(ok)
    return ActivationStore.open(cfg.out)


def _run_single(cfg: CacheConfig, log: Callable[[str], None]) -> ActivationStore:
    setup = setup_cache(cfg)
    store: ActivationStore | None = None
    done = 0
    if cfg.overwrite:
        shutil.rmtree(parts_dir(cfg.out), ignore_errors=True)
    elif cfg.out.exists():
        attrs = read_attrs(cfg.out)
        check_same(attrs, setup.identity, cfg.out)
        progress = attrs[ATTR_PROGRESS]
        if progress.get(PROGRESS_FINISHED):
            # opening for appending persists the committed array shapes, in case the
            # run was killed between its final commit point and writing them
            ActivationStore.open(cfg.out, mode="a").close()
            log(f"{cfg.out}: already complete ({progress[PROGRESS_SAMPLES_DONE]} samples)")
            return ActivationStore.open(cfg.out)
        store = ActivationStore.open(cfg.out, mode="a")
        done = int(store.attrs[ATTR_PROGRESS].get(PROGRESS_SAMPLES_DONE, 0))
        log(f"{cfg.out}: resuming after {done} samples")
    elif parts_dir(cfg.out).exists():
        raise StoreError(
            f"{parts_dir(cfg.out)} holds the parts of an unfinished multi-rank cache of "
            f"{cfg.out}: re-run it with torchrun and the same number of ranks to finish it, "
            "or pass --overwrite"
        )
    store, consumed = cache_loop(cfg, setup, cfg.out, store, done)
    report = getattr(setup.source, "report", None)
    if store is None:
        from vlmfast.data.sources.folder import FORMAT_DOCS

        skipped = report.brief() if report is not None and report.n_bad else ""
        raise InputError(
            f"{cfg.data}: no records to cache ({skipped or 'the source is empty'}); "
            f"the formats a source reads: {FORMAT_DOCS}"
        )
    store.close()
    log(f"{cfg.out}: {consumed} samples, hooks {', '.join(setup.hooks)}")
    report_skipped(cfg, getattr(setup.source, "report", None), log)
    return ActivationStore.open(cfg.out)
