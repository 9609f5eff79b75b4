"""Caching on several processes (``torchrun``): per-rank parts, then a parallel merge.

Design (why, in short): ranks cannot know their row offsets in the final
arrays in advance, because a batch's row count is only known after its
forward (``--positions all`` stores one row per real caption token; NaN/Inf
rows may be skipped; a record may lack an image or a caption). So:

1. **Cache.** The source is cut into batches exactly as in a single-process
   run (batch ``g`` = records ``g*batch_size ...``; the same batches give the
   same forward, bit for bit). Rank ``r`` of ``W`` runs the forward on batches
   ``g % W == r`` and appends them to its own store
   ``OUT.parts/rank<r>-of-<W>.zarr``: an ordinary crash-safe, resumable store
   (one writer, durable commits), so a killed rank resumes from its own last
   commit. The batch boundaries depend on which records are good, so the ranks
   first split a validity scan of the source (``caching.scan``); each rank then
   reads the whole source but decodes, runs and writes only its share.
2. **Merge** and 3. **Commit** (after a barrier): ``caching.merge``; the commit is the
   store's one commit protocol (``vlmfast.store.commit``), then the parts are deleted.

A SIGKILL at any moment loses nothing committed: before the commit point the
final store shows no rows and the parts are intact (a re-run resumes the
parts, then redoes the merge, which rewrites the same chunks); after it the
store is complete and a re-run only removes leftover parts. The result is
identical to a single-process run of the same command. The merge copies
each row once more (read from the parts, write into the store); in exchange no
rank ever waits for another during the forward, and crash safety stays the
single-writer store's.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from vlmfast.caching.config import CacheConfig, part_path, parts_dir
from vlmfast.caching.crash import Crash
from vlmfast.caching.loop import cache_loop
from vlmfast.caching.merge import commit_final, create_final, make_plan, write_share
from vlmfast.caching.scan import (
    BadRecords,
    known_records,
    load_scan,
    save_scan,
    scan_path,
    scan_share,
)
from vlmfast.caching.setup import CacheSetup, check_same, setup_cache
from vlmfast.caching.skip_report import report_skipped
from vlmfast.data.sources.pending import resolve_decode_workers
from vlmfast.errors import InputError, StoreError
from vlmfast.store.activation_store import ActivationStore, read_attrs
from vlmfast.store.schema import (
    ATTR_DATASET,
    ATTR_PROGRESS,
    ATTR_USER,
    DATASET_HASH,
    PROGRESS_FINISHED,
    PROGRESS_SAMPLES_DONE,
)


def _broadcast(value: Any) -> Any:
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _prepare_out(cfg: CacheConfig, ident: dict[str, Any], world: int) -> str:
    """Rank 0: "done" when ``out`` is complete, else "cache" (after --overwrite cleanup)."""
    out, parts = cfg.out, parts_dir(cfg.out)
    if cfg.overwrite:
        if out.exists():
            read_attrs(out)  # refuse to delete a folder that is not a store
            shutil.rmtree(out)
        shutil.rmtree(parts, ignore_errors=True)
        return "cache"
    if out.exists():
        attrs = read_attrs(out)
        check_same(attrs, ident, out)
        if attrs[ATTR_PROGRESS].get(PROGRESS_FINISHED):
            if parts.exists():  # killed after the commit point: finish the shapes, clean up
                ActivationStore.open(out, mode="a").close()
                shutil.rmtree(parts)
            return "done"
        if not parts.exists():
            raise StoreError(
                f"{out} holds an unfinished single-process cache: re-run it without "
                "torchrun to resume it, or pass --overwrite"
            )
    if parts.exists():
        other = sorted(p.name for p in parts.iterdir() if f"-of-{world:05d}." not in p.name)
        if other:
            raise StoreError(
                f"{parts} holds parts of a run with another number of ranks ({other[0]}): "
                f"re-run with that many ranks, or pass --overwrite"
            )
    return "cache"


def _open_part(
    cfg: CacheConfig, ident: dict[str, Any], path: Path, want: dict[str, Any]
) -> tuple[ActivationStore | None, int, bool]:
    """This rank's part (open for appending), records done, and whether it is finished."""
    if not path.exists():
        return None, 0, False
    attrs = read_attrs(path)
    check_same(attrs, ident, path)
    if attrs.get(ATTR_USER) != want:
        raise StoreError(
            f"{path} was cached with {attrs.get(ATTR_USER)!r}, now {want!r}; "
            "re-run with the same --batch-size and number of ranks, or pass --overwrite"
        )
    progress = attrs[ATTR_PROGRESS]
    if progress.get(PROGRESS_FINISHED):
        return None, int(progress[PROGRESS_SAMPLES_DONE]), True
    store = ActivationStore.open(path, mode="a")
    return store, int(progress.get(PROGRESS_SAMPLES_DONE, 0)), False


def run_ranks(cfg: CacheConfig, rank: int, world: int, log: Callable[[str], None]) -> None:
    """One rank's share of a multi-rank cache (every rank calls it; see the module doc)."""
    import torch.distributed as dist

    setup = setup_cache(cfg)
    decision: Any = None
    if rank == 0:
        try:
            decision = _prepare_out(cfg, setup.identity, world)
        except (StoreError, InputError) as err:
            decision = ("error", type(err).__name__, str(err))
    decision = _broadcast(decision)
    if isinstance(decision, tuple):
        raise (StoreError if decision[1] == "StoreError" else InputError)(decision[2])
    if decision == "done":
        log(f"{cfg.out}: already complete")
        return
    _cache_part(cfg, setup, rank, world, log)
    dist.barrier()  # every part is finished
    plan = make_plan(cfg.out, world)
    if rank == 0:
        create_final(cfg.out, plan)
    dist.barrier()  # the final store exists
    crash = Crash(cfg.crash_at)
    crash.current = "merge"
    written, arrays = write_share(cfg.out, plan, rank, world)
    crash("written")
    reports: list[Any] = [None] * world
    dist.all_gather_object(reports, written)
    if rank == 0:
        commit_final(cfg.out, plan, reports, arrays, crash)
        log(
            f"{cfg.out}: {plan.samples_done} samples from {world} ranks, hooks {', '.join(plan.hooks)}"
        )
        # every rank read the whole source (bad images from the shared scan), so rank 0's
        # report is the run's, as in one process
        report_skipped(cfg, getattr(setup.source, "report", None), log)
    dist.barrier()  # the store is committed


def _cache_part(
    cfg: CacheConfig, setup: CacheSetup, rank: int, world: int, log: Callable[[str], None]
) -> None:
    """Caches (or resumes, or finds finished) this rank's part store."""
    select = partial(_of_rank, rank=rank, world=world)
    if cfg.limit is None:  # see caching.scan: decode only this rank's batches
        bad = _shared_scan(cfg, setup, rank, world)
        setup = replace(
            setup,
            records=partial(known_records, setup.source, bad, select, cfg.batch_size),
        )
    path = part_path(cfg.out, rank, world)
    want = {"rank": rank, "world": world, "batch_size": cfg.batch_size}
    store, done, finished = _open_part(cfg, setup.identity, path, want)
    if not finished:
        if done:
            log(f"{cfg.out}: rank {rank} resuming after {done} samples")
        store, _ = cache_loop(
            cfg,
            setup,
            path,
            store,
            done,
            select=select,
            user_attrs=want,
            show_progress=rank == 0,
        )
    if store is not None:
        store.close()


def _of_rank(batch: int, *, rank: int, world: int) -> bool:
    """Whether ``rank`` of ``world`` runs batch ``batch``."""
    return batch % world == rank


def _shared_scan(cfg: CacheConfig, setup: CacheSetup, rank: int, world: int) -> BadRecords:
    """The bad records of the source: loaded from ``OUT.parts``, or scanned by all ranks
    (each its share) and saved there by rank 0 (see ``caching.scan``)."""
    import torch.distributed as dist

    path = scan_path(parts_dir(cfg.out), world)
    fingerprint = setup.identity[ATTR_DATASET][DATASET_HASH]
    saved = load_scan(path, fingerprint) if rank == 0 else None
    if _broadcast(saved is not None):
        found = load_scan(path, fingerprint)
        if found is None:
            raise StoreError(f"{path} could not be read on rank {rank}")
        return found
    workers = resolve_decode_workers(cfg.decode_workers)
    mine = scan_share(setup.source, rank, world, workers)
    shares: list[Any] = [None] * world
    dist.all_gather_object(shares, mine)
    bad: BadRecords = {k: v for share in shares for k, v in share.items()}
    if rank == 0:
        save_scan(path, fingerprint, bad)
    dist.barrier()  # saved before any part is written
    return bad
