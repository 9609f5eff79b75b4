"""Image-caption pairs for the causal commands and stages: the one record filter.

``read_pairs`` reads a source's records that have both an image and a caption (optionally
only those whose caption names a concept), keeps the source's bad-record report beside
them and fails with an error naming the spec when too few are left. ``vlmfast trace``,
``attribute``, ``circuit``, ``direct-effects`` and their pipeline stages all read through
it, so a command and its stage see the same pairs and report the same skipped records.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from vlmfast.data.records import BadRecordReport, PairRecord
from vlmfast.errors import InputError


@dataclass
class Pairs:
    """Records with both an image and a caption, and what reading them skipped."""

    records: list[PairRecord]
    spec: str
    report: BadRecordReport = field(default_factory=BadRecordReport)
    """The source's bad records, plus records without an image or a caption."""

    def __len__(self) -> int:
        return len(self.records)

    @property
    def images(self) -> list[Any]:
        return [r.image for r in self.records]

    @property
    def captions(self) -> list[str]:
        return [str(r.caption) for r in self.records]


def caption_pattern(concept: str) -> re.Pattern[str]:
    """Matches ``concept`` as a whole word, case-insensitively."""
    return re.compile(rf"\b{re.escape(concept)}\b", re.IGNORECASE)


def _usable(records: Iterable[PairRecord], report: BadRecordReport) -> Iterable[PairRecord]:
    for r in records:
        if r.image is None or not r.caption:
            report.add("no_image_or_caption", f"record {r.sample_id}")
            continue
        yield r


def read_pairs(
    spec: str,
    limit: int | None = None,
    *,
    minimum: int = 1,
    what: str = "--data",
    naming: str | None = None,
    scan: int = 4000,
) -> Pairs:
    """The first ``limit`` records of ``spec`` with an image and a caption (with
    ``naming``: among the first ``scan`` records, those whose caption names that concept
    as a whole word). Fewer than ``minimum`` is an InputError naming ``what``, the spec
    and the records skipped."""
    from vlmfast.data import open_source

    if limit is not None and limit < minimum:
        raise InputError(f"the record limit must be >= {minimum}, got {limit}")
    source = open_source(spec, limit=scan if naming else limit)
    pattern = caption_pattern(naming) if naming else None
    report = BadRecordReport()
    records: list[PairRecord] = []
    for r in _usable(source, report):
        if pattern is not None and not pattern.search(str(r.caption)):
            continue
        records.append(r)
        if limit is not None and len(records) == limit:
            break
    report.counts.update(source.report.counts)
    for reason, examples in source.report.examples.items():
        report.examples.setdefault(reason, []).extend(examples)
    report.n_ok = len(records)
    if len(records) < minimum:
        which = (
            f"captions naming {naming!r}" if naming else "records with both an image and a caption"
        )
        skipped = f" ({report.brief()})" if report.n_bad else ""
        raise InputError(
            f"{what} {spec!r} yielded {len(records)} {which}; need at least {minimum}{skipped}"
        )
    return Pairs(records, spec, report)


def image_caption_records(spec: str, limit: int | None, minimum: int = 1) -> list[PairRecord]:
    """The records of ``read_pairs(spec, limit, minimum=minimum)`` as a list."""
    return read_pairs(spec, limit, minimum=minimum).records
