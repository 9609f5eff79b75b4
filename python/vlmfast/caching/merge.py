"""The merge of a multi-rank cache: the ranks' part stores copied into the final store
in source order, then committed once (see ``caching.ranks`` for the whole design).

**Plan.** Every rank computes the same plan from the parts' index arrays: sample ids
increase along the source order, so the final row order is the parts' rows ordered by
the runs of consecutive sample ids each part owns (one run = one or more consecutive
batches of one rank). **Write.** The final arrays are split into ``W`` ranges of
whole chunks; each rank copies the rows of its range from the parts and writes them
with ``StoreArray.write_at`` (disjoint whole chunks at known offsets, fsynced, no
shared state). **Commit** (rank 0, after every rank reported its ranges): checks that
the ranges tile every array, then commits by the store's one commit protocol
(``vlmfast.store.commit``: shapes durable, then the root attributes with the committed
counts and ``progress``, the commit point), then deletes the parts.
"""

from __future__ import annotations

import itertools
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vlmfast.caching.config import part_path, parts_dir
from vlmfast.caching.crash import Crash
from vlmfast.errors import InputError, StoreError
from vlmfast.store.activation_store import ActivationStore, read_attrs
from vlmfast.store.arrays import label_arrays, open_array
from vlmfast.store.box_arrays import box_array_specs
from vlmfast.store.commit import commit_rows
from vlmfast.store.convert import NUMPY_CARRIER, as_bytes
from vlmfast.store.schema import (
    ATTR_BOXES,
    ATTR_CHUNK_ROWS,
    ATTR_COMMITTED_BOX_ROWS,
    ATTR_COMPRESSION,
    ATTR_CONCEPTS,
    ATTR_DATASET,
    ATTR_DTYPE,
    ATTR_HOOKS,
    ATTR_MODEL,
    ATTR_POSITIONS,
    ATTR_PROGRESS,
    ATTR_SHARD_INNER_ROWS,
    ATTR_SKIPPED_NONFINITE,
    ATTR_TOWERS,
    BOX_ARRAYS,
    BOX_SAMPLE_ARRAY,
    CONCEPT_IMAGE_BASIS,
    CONCEPT_KINDS,
    CONCEPT_NAMES,
    DEFAULT_IMAGE_BASIS,
    HOOK_WIDTH,
    INDEX_FIELDS,
    LABELS_SAMPLE_ARRAY,
    PROGRESS_FINISHED,
    PROGRESS_LAST_SAMPLE,
    PROGRESS_SAMPLES_DONE,
    acts_array,
    hook_arrays,
)

LABELS_GROUP = "labels"
"""Plan key of the concept-label arrays (rows = label rows, not hook rows)."""
BOXES_GROUP = "labels/boxes"
"""Plan key of the object-box arrays (rows = boxes, their sample ids repeated per box)."""
MERGE_WINDOW_BYTES = 256 << 20
"""At most this many activation bytes are copied per ``write_at`` during the merge."""

Segment = tuple[int, int, int, int]
"""``(final start, part, part start, part stop)``."""


@dataclass
class MergePlan:
    """Where every final row comes from (the same on every rank)."""

    parts: list[Path]
    """Part stores, rank order (ranks that cached nothing have none)."""
    hooks: list[str]
    """Hooks of the store."""
    widths: dict[str, int]
    """Row width per hook."""
    segments: dict[str, list[Segment]]
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
    attrs = store.attrs
    if attrs.get(ATTR_BOXES):
        ids[BOXES_GROUP] = store.read_raw(
            BOX_SAMPLE_ARRAY, np.dtype(np.int64), None, 0, attrs[ATTR_COMMITTED_BOX_ROWS]
        )
    return ids


def _open_parts(out: Path, world: int) -> tuple[list[Path], list[ActivationStore]]:
    """The finished part stores of a ``world``-rank run into ``out``."""
    paths = [part_path(out, r, world) for r in range(world)]
    paths = [p for p in paths if p.exists()]
    if not paths:
        raise InputError(f"{out}: no records to cache")
    stores = [ActivationStore.open(p) for p in paths]
    first = stores[0].attrs
    for path, store in zip(paths, stores):
        got = store.attrs
        if not got[ATTR_PROGRESS].get(PROGRESS_FINISHED):
            raise StoreError(f"{path} is not finished; every rank must finish before the merge")
        if got[ATTR_HOOKS] != first[ATTR_HOOKS] or got[ATTR_CONCEPTS] != first[ATTR_CONCEPTS]:
            raise StoreError(f"{path} has other hooks or concepts than {paths[0]}")
    return paths, stores


def _runs(out: Path, ids: list[dict[str, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """The runs of consecutive sample ids of one part: their first ids and their parts."""
    owned = [np.unique(np.concatenate(list(d.values()))) for d in ids]
    all_ids = np.concatenate(owned)
    owner = np.concatenate([np.full(len(o), i, dtype=np.int64) for i, o in enumerate(owned)])
    order = np.argsort(all_ids, kind="stable")
    all_ids, owner = all_ids[order], owner[order]
    dup = np.flatnonzero(all_ids[1:] == all_ids[:-1])
    if dup.size:
        raise StoreError(f"{out}: sample {int(all_ids[dup[0]])} was cached by two ranks")
    starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
    return all_ids[starts], owner[starts]


def _segments(
    group: str,
    ids: list[dict[str, np.ndarray]],
    runs: tuple[np.ndarray, np.ndarray],
    paths: list[Path],
) -> tuple[list[Segment], int]:
    """The segments of ``group``'s final rows in final order, and their total."""
    run_first, run_owner = runs
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
    segs: list[Segment] = []
    for _, part, a, b in found:
        segs.append((pos, part, a, b))
        pos += b - a
    return segs, pos


def make_plan(out: Path, world: int) -> MergePlan:
    """Reads the parts' index arrays and decides the final order of every row."""
    paths, stores = _open_parts(out, world)
    first = stores[0].attrs
    hooks = list(first[ATTR_HOOKS])
    ids = [_part_ids(s, hooks) for s in stores]
    runs = _runs(out, ids)
    segments: dict[str, list[Segment]] = {}
    totals: dict[str, int] = {}
    for group in [*hooks, *(g for g in (LABELS_GROUP, BOXES_GROUP) if g in ids[0])]:
        segments[group], totals[group] = _segments(group, ids, runs, paths)
    attrs = [s.attrs for s in stores]
    skipped = {h: sum(int(a[ATTR_SKIPPED_NONFINITE][h]) for a in attrs) for h in hooks}
    done = max(int(a[ATTR_PROGRESS][PROGRESS_SAMPLES_DONE]) for a in attrs)
    lasts = [a[ATTR_PROGRESS].get(PROGRESS_LAST_SAMPLE) for a in attrs]
    last = max((int(x) for x in lasts if x is not None), default=None)
    widths = {h: int(first[ATTR_HOOKS][h][HOOK_WIDTH]) for h in hooks}
    return MergePlan(paths, hooks, widths, segments, totals, first, skipped, done, last)


def create_final(out: Path, plan: MergePlan) -> None:
    """Rank 0: an empty final store (replacing an unfinished merge target)."""
    a = plan.attrs
    concepts = a[ATTR_CONCEPTS]
    store = ActivationStore.create(
        out,
        plan.widths,
        dtype=a[ATTR_DTYPE],
        chunk_rows=int(a[ATTR_CHUNK_ROWS]),
        compression=a[ATTR_COMPRESSION],
        shard_inner_rows=a[ATTR_SHARD_INNER_ROWS],
        model=a[ATTR_MODEL],
        dataset=a[ATTR_DATASET],
        positions=a[ATTR_POSITIONS],
        concepts=None if concepts is None else (concepts[CONCEPT_NAMES], concepts[CONCEPT_KINDS]),
        overwrite=True,
        image_basis=str((concepts or {}).get(CONCEPT_IMAGE_BASIS, DEFAULT_IMAGE_BASIS)),
        towers=a.get(ATTR_TOWERS),
        boxes=a.get(ATTR_BOXES),
    )
    store.close()


def _array_names(group: str, attrs: dict[str, Any]) -> list[str]:
    if group == LABELS_GROUP:
        return label_arrays(attrs)
    if group == BOXES_GROUP:
        return list(BOX_ARRAYS)
    return hook_arrays(group)


def _read_rows(
    store: ActivationStore, group: str, width: int, dtype: str, a: int, b: int
) -> list[np.ndarray]:
    """Rows ``[a, b)`` of every array of ``group`` in a part, as carrier arrays."""
    attrs = store.attrs
    if group == BOXES_GROUP:
        specs = box_array_specs(len(attrs[ATTR_CONCEPTS][CONCEPT_NAMES]))
        return [store.read_raw(name, dt, w, a, b) for name, (dt, w) in specs.items()]
    if group == LABELS_GROUP:
        labels_width = max(len(attrs[ATTR_CONCEPTS][CONCEPT_NAMES]), 1)
        return [
            store.read_raw(name, np.dtype(np.int64), None, a, b)
            if name == LABELS_SAMPLE_ARRAY
            else store.read_raw(name, np.dtype(np.bool_), labels_width, a, b)
            for name in label_arrays(attrs)
        ]
    idx = store.index(group, a, b)
    acts = store.read_raw(acts_array(group), NUMPY_CARRIER[dtype], width, a, b)
    return [acts, *(np.ascontiguousarray(getattr(idx, f)) for f in INDEX_FIELDS)]


def write_share(
    out: Path, plan: MergePlan, rank: int, world: int
) -> tuple[dict[str, tuple[int, int]], dict[str, Any]]:
    """Writes this rank's chunk range of every final array; returns the ranges and the
    open arrays (rank 0 commits through them)."""
    chunk = int(plan.attrs[ATTR_CHUNK_ROWS])
    stores = [ActivationStore.open(p) for p in plan.parts]
    written: dict[str, tuple[int, int]] = {}
    arrays: dict[str, Any] = {}
    for group in plan.segments:
        n = plan.totals[group]
        names = _array_names(group, plan.attrs)
        for name in names:
            arrays[name] = open_array(str(out), name, 0, writable=True)
        n_chunks = -(-n // chunk)
        lo = min(rank * n_chunks // world * chunk, n)
        hi = min((rank + 1) * n_chunks // world * chunk, n)
        for name in names:
            written[name] = (lo, hi)
        _write_range(plan, group, stores, {name: arrays[name] for name in names}, lo, hi)
    return written, arrays


def _write_range(
    plan: MergePlan,
    group: str,
    stores: list[ActivationStore],
    arrays: dict[str, Any],
    lo: int,
    hi: int,
) -> None:
    """Copies the final rows ``[lo, hi)`` of ``group`` from the parts into ``arrays``."""
    dtype = plan.attrs[ATTR_DTYPE]
    chunk = int(plan.attrs[ATTR_CHUNK_ROWS])
    n = plan.totals[group]
    width = plan.widths.get(group, 1)
    row_bytes = width * (NUMPY_CARRIER[dtype].itemsize if group in plan.widths else 1)
    step = max(1, MERGE_WINDOW_BYTES // max(row_bytes * chunk, 1)) * chunk
    for wa in range(lo, hi, step):
        wb = min(wa + step, hi)
        pieces: list[list[np.ndarray]] = []
        for start, p, a, b in plan.segments[group]:
            s0, s1 = max(start, wa), min(start + b - a, wb)
            if s0 < s1:
                pieces.append(
                    _read_rows(stores[p], group, width, dtype, a + s0 - start, a + s1 - start)
                )
        for i, (name, array) in enumerate(arrays.items()):
            data = np.concatenate([pc[i] for pc in pieces])
            if len(data) != wb - wa:
                raise StoreError(f"merge of {name}: rows {wa}:{wb} have {len(data)} sources")
            array.write_at(wa, as_bytes(np.ascontiguousarray(data)), wb == n)


def _check_tiling(plan: MergePlan, reports: list[dict[str, tuple[int, int]]]) -> None:
    """A ``StoreError`` unless the ranks' ranges tile every final array."""
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


def commit_final(
    out: Path,
    plan: MergePlan,
    reports: list[dict[str, tuple[int, int]]],
    arrays: dict[str, Any],
    crash: Crash,
) -> None:
    """Rank 0: checks that the ranks' ranges tile every array, then commits (the store's
    one commit protocol) and removes the parts."""
    _check_tiling(plan, reports)
    rows = {n: plan.totals[g] for g in plan.segments for n in _array_names(g, plan.attrs)}
    committing = {name: arrays[name] for name in rows}
    for name, n in rows.items():
        committing[name].adopt_written(n)
    attrs = read_attrs(out)
    attrs[ATTR_SKIPPED_NONFINITE] = dict(plan.skipped)
    progress = {
        PROGRESS_SAMPLES_DONE: plan.samples_done,
        PROGRESS_LAST_SAMPLE: plan.last_sample,
        PROGRESS_FINISHED: True,
    }
    commit_rows(out, committing, rows, attrs, progress=progress, crash_hook=crash)
    crash("committed")  # after the commit point, before the parts are removed
    shutil.rmtree(parts_dir(out), ignore_errors=True)
