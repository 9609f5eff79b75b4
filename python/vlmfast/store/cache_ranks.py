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
   first split a validity scan of the source (``cache_scan``); each rank then
   reads the whole source but decodes, runs and writes only its share.
2. **Merge** (after a barrier). Every rank computes the same plan from the parts'
   index arrays: sample ids increase along the source order, so the final row
   order is the parts' rows ordered by the runs of consecutive sample ids each
   part owns (one run = one or more consecutive batches of one rank). The
   final arrays are split into ``W`` ranges of whole chunks; each rank copies
   the rows of its range from the parts and writes them with
   ``StoreArray.write_at`` (disjoint whole chunks at known offsets, fsynced, no
   shared state).
3. **Commit** (rank 0, after every rank reported its ranges): checks that the
   ranges tile every array, then commits exactly like ``ActivationStore.commit``:
   the array shapes made durable, the root attributes with the committed row
   counts, labels and ``progress`` written (the commit point), and the parts
   deleted.

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

import itertools
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from vlmfast import _native
from vlmfast.data.sources.pending import resolve_decode_workers
from vlmfast.errors import InputError, StoreError
from vlmfast.store._convert import NUMPY_CARRIER, as_bytes
from vlmfast.store.activation_store import ActivationStore, label_arrays, read_attrs
from vlmfast.store.boxes import BOX_ARRAYS, BOX_SAMPLE_ARRAY, box_array_specs
from vlmfast.store.cache import (
    CacheConfig,
    _check_same,
    _Crash,
    cache_loop,
    setup_cache,
)
from vlmfast.store.cache_scan import (
    BadRecords,
    known_records,
    load_scan,
    save_scan,
    scan_path,
    scan_share,
)
from vlmfast.store.layout import (
    INDEX_FIELDS,
    LABELS_SAMPLE_ARRAY,
    acts_array,
    index_array,
)

LABELS_GROUP = "labels"
"""Plan key of the concept-label arrays (rows = label rows, not hook rows)."""
BOXES_GROUP = "labels/boxes"
"""Plan key of the object-box arrays (rows = boxes, their sample ids repeated per box)."""
MERGE_WINDOW_BYTES = 256 << 20
"""At most this many activation bytes are copied per ``write_at`` during the merge."""


def parts_dir(out: Path) -> Path:
    """Folder of the per-rank part stores of a multi-rank cache into ``out``."""
    return out.with_name(out.name + ".parts")


def part_path(out: Path, rank: int, world: int) -> Path:
    """Part store of ``rank`` of ``world``."""
    return parts_dir(out) / f"rank{rank:05d}-of-{world:05d}.zarr"


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
        _check_same(attrs, ident, out)
        if attrs["progress"].get("finished"):
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
    _check_same(attrs, ident, path)
    if attrs.get("user") != want:
        raise StoreError(
            f"{path} was cached with {attrs.get('user')!r}, now {want!r}; "
            "re-run with the same --batch-size and number of ranks, or pass --overwrite"
        )
    progress = attrs["progress"]
    if progress.get("finished"):
        return None, int(progress["samples_done"]), True
    store = ActivationStore.open(path, mode="a")
    return store, int(progress.get("samples_done", 0)), False


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
    select = partial(_of_rank, rank=rank, world=world)
    if cfg.limit is None:  # see cache_scan: decode only this rank's batches
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
    dist.barrier()  # every part is finished
    plan = make_plan(cfg.out, world)
    if rank == 0:
        _create_final(cfg, plan)
    dist.barrier()  # the final store exists
    crash = _Crash(cfg.crash_at)
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
    dist.barrier()  # the store is committed


def _of_rank(batch: int, *, rank: int, world: int) -> bool:
    """Whether ``rank`` of ``world`` runs batch ``batch``."""
    return batch % world == rank


def _shared_scan(cfg: CacheConfig, setup: Any, rank: int, world: int) -> BadRecords:
    """The bad records of the source: loaded from ``OUT.parts``, or scanned by all ranks
    (each its share) and saved there by rank 0 (see ``cache_scan``)."""
    import torch.distributed as dist

    path = scan_path(parts_dir(cfg.out), world)
    fingerprint = setup.identity["dataset"]["hash"]
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


@dataclass
class MergePlan:
    """Where every final row comes from (the same on every rank)."""

    parts: list[Path]
    """Part stores, rank order (ranks that cached nothing have none)."""
    hooks: list[str]
    """Hooks of the store."""
    widths: dict[str, int]
    """Row width per hook."""
    segments: dict[str, list[tuple[int, int, int, int]]]
    """Per hook (and ``labels``): ``(final start, part, part start, part stop)`` in final order."""
    totals: dict[str, int]
    """Final rows per hook (and label rows under ``labels``)."""
    attrs: dict[str, Any]
    """Root attributes of the first part (provenance, dtype, concepts, chunking)."""
    skipped: dict[str, int]
    """NaN/Inf rows skipped per hook, summed over the parts."""
    samples_done: int
    """Source records read (every rank reads them all)."""
    last_sample: int | None
    """Sample id of the last record read."""


def _part_ids(store: ActivationStore, hooks: list[str]) -> dict[str, np.ndarray]:
    ids = {h: store.index(h).sample for h in hooks}
    labels = store.labels
    if labels is not None:
        ids[LABELS_GROUP] = labels.sample
    if store.attrs.get("boxes"):
        ids[BOXES_GROUP] = store.read_raw(
            BOX_SAMPLE_ARRAY, np.dtype(np.int64), None, 0, store.attrs["committed_box_rows"]
        )
    return ids


def make_plan(out: Path, world: int) -> MergePlan:
    """Reads the parts' index arrays and decides the final order of every row."""
    paths = [part_path(out, r, world) for r in range(world)]
    paths = [p for p in paths if p.exists()]
    if not paths:
        raise InputError(f"{out}: no records to cache")
    stores = [ActivationStore.open(p) for p in paths]
    first = stores[0].attrs
    hooks = list(first["hooks"])
    for path, store in zip(paths, stores):
        got = store.attrs
        if not got["progress"].get("finished"):
            raise StoreError(f"{path} is not finished; every rank must finish before the merge")
        if got["hooks"] != first["hooks"] or got["concepts"] != first["concepts"]:
            raise StoreError(f"{path} has other hooks or concepts than {paths[0]}")
    ids = [_part_ids(s, hooks) for s in stores]
    # which part holds each sample, then the runs of consecutive samples of one part
    owned = [np.unique(np.concatenate(list(d.values()))) for d in ids]
    all_ids = np.concatenate(owned)
    owner = np.concatenate([np.full(len(o), i, dtype=np.int64) for i, o in enumerate(owned)])
    order = np.argsort(all_ids, kind="stable")
    all_ids, owner = all_ids[order], owner[order]
    dup = np.flatnonzero(all_ids[1:] == all_ids[:-1])
    if dup.size:
        raise StoreError(f"{out}: sample {int(all_ids[dup[0]])} was cached by two ranks")
    starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
    run_first, run_owner = all_ids[starts], owner[starts]
    segments: dict[str, list[tuple[int, int, int, int]]] = {}
    totals: dict[str, int] = {}
    for group in [*hooks, *(g for g in (LABELS_GROUP, BOXES_GROUP) if g in ids[0])]:
        found: list[tuple[int, int, int, int]] = []  # (run, part, start, stop)
        for part, d in enumerate(ids):
            col = d[group]
            if not col.size:
                continue
            run = np.searchsorted(run_first, col, side="right") - 1
            if np.any(np.diff(run) < 0) or np.any(run_owner[run] != part):
                raise StoreError(f"{paths[part]}: rows of {group} are not in source order")
            cuts = np.flatnonzero(np.r_[True, run[1:] != run[:-1], True]).tolist()
            found += [(int(run[a]), part, a, b) for a, b in itertools.pairwise(cuts)]
        found.sort()
        pos = 0
        segs: list[tuple[int, int, int, int]] = []
        for _, part, a, b in found:
            segs.append((pos, part, a, b))
            pos += b - a
        segments[group], totals[group] = segs, pos
    skipped = {h: sum(int(s.attrs["skipped_nonfinite"][h]) for s in stores) for h in hooks}
    done = max(int(s.attrs["progress"]["samples_done"]) for s in stores)
    lasts = [s.attrs["progress"].get("last_sample") for s in stores]
    last = max((int(x) for x in lasts if x is not None), default=None)
    widths = {h: int(first["hooks"][h]["width"]) for h in hooks}
    return MergePlan(paths, hooks, widths, segments, totals, first, skipped, done, last)


def _create_final(cfg: CacheConfig, plan: MergePlan) -> None:
    """Rank 0: an empty final store (replacing an unfinished merge target)."""
    a = plan.attrs
    concepts = a["concepts"]
    store = ActivationStore.create(
        cfg.out,
        plan.widths,
        dtype=a["dtype"],
        chunk_rows=int(a["chunk_rows"]),
        compression=a["compression"],
        shard_inner_rows=a["shard_inner_rows"],
        model=a["model"],
        dataset=a["dataset"],
        positions=a["positions"],
        concepts=None if concepts is None else (concepts["names"], concepts["kinds"]),
        overwrite=True,
        image_basis=str((concepts or {}).get("image_basis", "caption")),
        towers=a.get("towers"),
        boxes=a.get("boxes"),
    )
    store.close()


def _array_names(group: str, attrs: dict[str, Any]) -> list[str]:
    if group == LABELS_GROUP:
        return label_arrays(attrs)
    if group == BOXES_GROUP:
        return list(BOX_ARRAYS)
    return [acts_array(group), *(index_array(group, f) for f in INDEX_FIELDS)]


def _read_rows(
    store: ActivationStore, group: str, width: int, dtype: str, a: int, b: int
) -> list[np.ndarray]:
    """Rows ``[a, b)`` of every array of ``group`` in a part, as carrier arrays."""
    if group == BOXES_GROUP:
        specs = box_array_specs(len(store.attrs["concepts"]["names"]))
        return [store.read_raw(name, dt, w, a, b) for name, (dt, w) in specs.items()]
    if group == LABELS_GROUP:
        labels_width = max(len(store.attrs["concepts"]["names"]), 1)
        return [
            store.read_raw(name, np.dtype(np.int64), None, a, b)
            if name == LABELS_SAMPLE_ARRAY
            else store.read_raw(name, np.dtype(np.bool_), labels_width, a, b)
            for name in label_arrays(store.attrs)
        ]
    idx = store.index(group, a, b)
    acts = store.read_raw(acts_array(group), NUMPY_CARRIER[dtype], width, a, b)
    return [acts, *(np.ascontiguousarray(getattr(idx, f)) for f in INDEX_FIELDS)]


def write_share(
    out: Path, plan: MergePlan, rank: int, world: int
) -> tuple[dict[str, tuple[int, int]], dict[str, Any]]:
    """Writes this rank's chunk range of every final array; returns the ranges and the
    open arrays (rank 0 commits through them)."""
    dtype = plan.attrs["dtype"]
    chunk = int(plan.attrs["chunk_rows"])
    stores = [ActivationStore.open(p) for p in plan.parts]
    written: dict[str, tuple[int, int]] = {}
    arrays: dict[str, Any] = {}
    for group, segs in plan.segments.items():
        n = plan.totals[group]
        names = _array_names(group, plan.attrs)
        for name in names:
            arrays[name] = _native.store_open_array(str(out), name, 0, writable=True)
        n_chunks = -(-n // chunk)
        lo = min(rank * n_chunks // world * chunk, n)
        hi = min((rank + 1) * n_chunks // world * chunk, n)
        for name in names:
            written[name] = (lo, hi)
        width = plan.widths.get(group, 1)
        row_bytes = width * (NUMPY_CARRIER[dtype].itemsize if group in plan.widths else 1)
        step = max(1, MERGE_WINDOW_BYTES // max(row_bytes * chunk, 1)) * chunk
        for wa in range(lo, hi, step):
            wb = min(wa + step, hi)
            pieces: list[list[np.ndarray]] = []
            for start, p, a, b in segs:
                s0, s1 = max(start, wa), min(start + b - a, wb)
                if s0 < s1:
                    pieces.append(
                        _read_rows(stores[p], group, width, dtype, a + s0 - start, a + s1 - start)
                    )
            for i, name in enumerate(names):
                data = np.concatenate([pc[i] for pc in pieces])
                if len(data) != wb - wa:
                    raise StoreError(f"merge of {name}: rows {wa}:{wb} have {len(data)} sources")
                arrays[name].write_at(wa, as_bytes(np.ascontiguousarray(data)), wb == n)
    return written, arrays


def commit_final(
    out: Path,
    plan: MergePlan,
    reports: list[dict[str, tuple[int, int]]],
    arrays: dict[str, Any],
    crash: _Crash,
) -> None:
    """Rank 0: checks that the ranks' ranges tile every array, then commits."""
    for group in plan.segments:
        n = plan.totals[group]
        for name in _array_names(group, plan.attrs):
            ranges = sorted(r[name] for r in reports if r[name][0] < r[name][1])
            pos = 0
            for a, b in ranges:
                if a != pos:
                    raise StoreError(f"merge of {name}: rows {pos}:{a} were written by no rank")
                pos = b
            if pos != n:
                raise StoreError(f"merge of {name}: rows {pos}:{n} were written by no rank")
    names = [n for g in plan.segments for n in _array_names(g, plan.attrs)]
    rows = [plan.totals[g] for g in plan.segments for _ in _array_names(g, plan.attrs)]
    for name, n in zip(names, rows):
        arrays[name].adopt_written(n)
    # the same commit as ActivationStore.commit: chunks and shapes durable, then the
    # commit point (the root attributes), then the arrays' committed counts
    _native.store_prepare_commit([arrays[n] for n in names], rows)
    attrs = read_attrs(out)
    for h in plan.hooks:
        attrs["committed_rows"][h] = plan.totals[h]
    attrs["committed_label_rows"] = plan.totals.get(LABELS_GROUP, 0)
    if BOXES_GROUP in plan.totals:
        attrs["committed_box_rows"] = plan.totals[BOXES_GROUP]
    attrs["skipped_nonfinite"] = dict(plan.skipped)
    attrs["progress"] = {
        "samples_done": plan.samples_done,
        "last_sample": plan.last_sample,
        "finished": True,
    }
    _native.store_write_group(str(out), "/", json.dumps(attrs))  # the commit point
    crash("committed")
    _native.store_mark_committed([arrays[n] for n in names], rows)
    shutil.rmtree(parts_dir(out), ignore_errors=True)
