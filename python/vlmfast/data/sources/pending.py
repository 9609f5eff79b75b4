"""Records whose image is decoded later, by a pool of threads, in source order.

A source's ``_records`` may yield a ``PendingRecord`` instead of a ``PairRecord``:
everything but the image is known (sample id, caption, meta), and ``load`` decodes
or renders the image. ``PairSource.__iter__`` filters pending records on what is
known (sampling, required concepts) before anything is decoded, decodes the rest
on ``decode_workers`` threads a bounded window ahead of the consumer, and hands
them out in source order: the records, their order and the bad-record report are
exactly what a one-thread pass gives. PIL releases the GIL while it decodes and
converts, so the threads run in parallel, and while a caller (``vlmfast cache``)
runs the forward on one batch the next batches' images are being decoded.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from vlmfast.data.records import BadRecordReport, PairRecord

if TYPE_CHECKING:
    from PIL import Image

T = TypeVar("T")
R = TypeVar("R")

ImageLoad = Callable[[], "tuple[Image.Image | None, str, str]"]
"""Decodes an image: ``(image, "", "")`` or ``(None, reason, detail)``."""

MAX_DEFAULT_WORKERS = 8
WINDOW_PER_WORKER = 4
"""Records decoded ahead of the consumer per worker thread (bounds memory)."""


def resolve_decode_workers(workers: int | None) -> int:
    """``workers``, or ``default_decode_workers()`` when it is None."""
    return default_decode_workers() if workers is None else workers


def default_decode_workers() -> int:
    """Threads that decode images when a source is not told: the CPUs this process may
    use, shared among the processes ``torchrun`` started on this host (its
    ``LOCAL_WORLD_SIZE``), at most 8."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    try:
        local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        local = 1
    return max(1, min(MAX_DEFAULT_WORKERS, n // local))


@dataclass
class PendingRecord:
    """A record whose image ``load`` has not run yet (see the module docs)."""

    sample_id: int
    load: ImageLoad
    caption: str | None
    meta: dict[str, Any] = field(default_factory=dict)
    where: str = ""
    """Where the record is, for the bad-record report if its image is bad."""


class LoadOnce:
    """``load`` run at most once and shared, e.g. by the captions of one COCO image."""

    def __init__(self, load: ImageLoad) -> None:
        self._load: ImageLoad | None = load
        self._result: tuple[Image.Image | None, str, str] | None = None
        self._lock = threading.Lock()

    def __call__(self) -> tuple[Image.Image | None, str, str]:
        with self._lock:
            if self._result is None:
                assert self._load is not None
                self._result = self._load()
                self._load = None
            return self._result


def _resolve(rec: PendingRecord, report: BadRecordReport) -> PairRecord | None:
    image, reason, detail = rec.load()
    if image is None:
        report.add(reason, rec.where, detail)
        return None
    return PairRecord(rec.sample_id, image, rec.caption, rec.meta)


class DeferredReport(BadRecordReport):
    """A report whose ``add`` calls are held until ``take`` (see ``decode_in_order``)."""

    def __init__(self) -> None:
        super().__init__()
        self._held: list[tuple[str, str, str]] = []

    def add(self, reason: str, where: str, detail: str = "") -> None:
        self._held.append((reason, where, detail))

    def take(self) -> list[tuple[str, str, str]]:
        """The held ``add`` calls, oldest first; holds nothing afterwards."""
        held, self._held = self._held, []
        return held


def map_ahead(
    fn: Callable[[T], R], items: Iterator[T], workers: int, name: str = "vlmfast-decode"
) -> Generator[tuple[T, Future[R]], None, None]:
    """``(item, future of fn(item))`` in the order of ``items``, with up to
    ``WINDOW_PER_WORKER * workers`` items read and submitted ahead of the consumer
    (bounded memory). When the consumer stops, queued calls are cancelled and the
    threads joined."""
    window = WINDOW_PER_WORKER * max(1, workers)
    ahead: deque[tuple[T, Future[R]]] = deque()
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix=name) as pool:
        try:
            for item in items:
                ahead.append((item, pool.submit(fn, item)))
                if len(ahead) >= window:
                    yield ahead.popleft()
            while ahead:
                yield ahead.popleft()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def _load(entry: tuple[Any, PairRecord | PendingRecord | None]) -> Any:
    rec = entry[1]
    return rec.load() if isinstance(rec, PendingRecord) else None


def decode_in_order(
    records: Callable[[BadRecordReport], Iterator[PairRecord | PendingRecord]],
    report: BadRecordReport,
    workers: int,
) -> Iterator[PairRecord]:
    """The records of ``records(report)`` with every pending image decoded, in order.

    A record whose image is bad is reported and dropped. ``workers`` <= 1
    decodes in the calling thread. Otherwise records are read and decoded ahead
    of the consumer (``map_ahead``); what the source reports while reading
    ahead is held and added to ``report`` only when the consumer gets that far,
    so a consumer that stops early (a ``limit``) sees exactly the report of a
    one-thread pass.
    """
    if workers <= 1:
        for rec in records(report):
            done = _resolve(rec, report) if isinstance(rec, PendingRecord) else rec
            if done is not None:
                yield done
        return
    held = DeferredReport()

    def entries() -> Iterator[tuple[list[tuple[str, str, str]], PairRecord | PendingRecord | None]]:
        """(reports made before the record, the record); a last entry without a record."""
        for rec in records(held):
            yield held.take(), rec
        yield held.take(), None

    with closing(map_ahead(_load, entries(), workers)) as ahead:  # threads joined on any exit
        for (before, entry), fut in ahead:
            for reason, where, detail in before:
                report.add(reason, where, detail)
            if entry is None:
                continue
            if not isinstance(entry, PendingRecord):
                yield entry
                continue
            image, reason, detail = fut.result()
            if image is None:
                report.add(reason, entry.where, detail)
                continue
            yield PairRecord(entry.sample_id, image, entry.caption, entry.meta)
