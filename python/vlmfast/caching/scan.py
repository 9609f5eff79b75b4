"""Multi-rank caching without every rank decoding every image.

Batches are cut every ``batch_size`` *good* records (as in one process, so the
store is identical), and whether a record is good is known only once its image
is decoded. So, before caching, the ranks split one validity scan: rank ``r`` of
``W`` decodes the candidate records ``r, r + W, ...`` (after ``sample`` and
``require``), and an all-gather gives every rank the full list of bad records.
Rank 0 saves it durably in ``OUT.parts`` (a resumed run loads it). Then every
rank reads the source knowing which records are good, so it counts batches
without decoding, and decodes only the images of its own batches: about
``2N/W`` decodes per rank instead of ``N`` (scan plus own batches; a win from
three ranks on). With a ``limit`` the scan could not stop early (the cut-off
depends on every rank's verdicts), so such runs keep decoding everything.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from vlmfast.data.records import BadRecordReport, PairRecord
from vlmfast.data.sources.pending import PendingRecord, map_ahead

BadRecords = dict[int, tuple[str, str, str]]
"""sample id -> (reason, where, detail) of a record whose image is bad."""


def scan_path(parts: Path, world: int) -> Path:
    """Where the bad-record list of a ``world``-rank run is kept."""
    return parts / f"scan-of-{world:05d}.json"


def scan_share(source: Any, rank: int, world: int, workers: int) -> BadRecords:
    """Decodes this rank's share of the candidate records; returns the bad ones."""
    mine = (
        rec
        for j, rec in enumerate(source.candidates(BadRecordReport()))
        if j % world == rank and isinstance(rec, PendingRecord)
    )
    bad: BadRecords = {}
    for rec, fut in map_ahead(lambda r: r.load(), mine, workers, "vlmfast-scan"):
        image, reason, detail = fut.result()
        if image is None:
            bad[rec.sample_id] = (reason, rec.where, detail)
    return bad


def save_scan(path: Path, fingerprint: str, bad: BadRecords) -> None:
    """Writes the list durably (temp file, fsync, rename, fsync of the folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"dataset": fingerprint, "bad": [[k, *v] for k, v in sorted(bad.items())]}
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_scan(path: Path, fingerprint: str) -> BadRecords | None:
    """The saved list, or None when there is none for this dataset."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if doc.get("dataset") != fingerprint:
        return None
    return {int(k): (str(r), str(w), str(d)) for k, r, w, d in doc["bad"]}


def known_records(
    source: Any,
    bad: BadRecords,
    select: Callable[[int], bool],
    batch_size: int,
    after: int,
    counted: int,
) -> Iterator[PairRecord]:
    """The source's good records past sample id ``after`` (``counted`` good ones before
    it), with images decoded only in the batches ``select`` picks.

    Records of other batches come without an image (``image=None``; they are
    counted, never run). Bad records are reported from ``bad`` without decoding.
    """

    def records(rep: BadRecordReport) -> Iterator[PairRecord | PendingRecord]:
        k = counted
        for rec in source.candidates(rep, after=after):
            if rec.sample_id in bad:
                rep.add(*bad[rec.sample_id])
                continue
            g, k = k // batch_size, k + 1
            if select(g) or not isinstance(rec, PendingRecord):
                yield rec
            else:
                yield PairRecord(rec.sample_id, None, rec.caption, rec.meta)

    return source.decoded(records, counted)
