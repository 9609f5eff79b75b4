"""``PairSource``: a re-iterable, deterministic stream of ``PairRecord`` with
sampling, limit, a concept filter, a fingerprint and a bad-record report.

A concrete source supplies ``_records(report)``: every record in its fixed
order, numbered 0, 1, 2, ... (``sample_id``, bad records included), reporting
bad ones in ``report``; a record may be a ``PendingRecord`` whose image is
decoded later. The base class then applies, in this order: ``sample`` (keep
each record with probability ``sample``, decided by a hash of ``(seed,
sample_id)``: the same records every run, independent of ``limit``), the
``require`` filter (caption must mention a concept of each required kind),
the decode of pending images on a thread pool (``sources.pending``: same
records and report as one thread; a record whose image is bad is dropped and
reported), and ``limit``. Records filtered out are never decoded.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from vlmfast.data.records import BadRecordReport, PairRecord
from vlmfast.data.sources.pending import PendingRecord, decode_in_order, resolve_decode_workers
from vlmfast.errors import InputError

if TYPE_CHECKING:
    from vlmfast.data.concepts.labeler import ConceptLabeler
    from vlmfast.data.concepts.labels import ConceptLabels
    from vlmfast.data.object_boxes import ObjectBoxes

REQUIRE_KINDS: dict[str, tuple[str, ...]] = {
    "object": ("object",),
    "attribute": ("color", "size", "material"),
    "color": ("color",),
    "size": ("size",),
    "material": ("material",),
    "relation": ("relation",),
}
"""``require`` names -> concept kinds any of which satisfies it."""


def parse_require(require: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"object,relation"`` or ``["object", "relation"]`` -> validated tuple."""
    if require is None:
        return ()
    items = [r.strip() for r in (require.split(",") if isinstance(require, str) else require)]
    items = [r for r in items if r]
    for r in items:
        if r not in REQUIRE_KINDS:
            raise InputError(
                f"require: unknown kind {r!r}; expected some of {sorted(REQUIRE_KINDS)}"
            )
    return tuple(items)


def parse_concepts(concepts: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """``"coco"`` / ``"default"`` (the preset sets), ``"coco80,colors"`` or a list of bundled
    vocabulary names and JSON paths -> validated tuple; ``None`` stays ``None``."""
    from vlmfast.data.concepts.vocabulary import BUNDLED, COCO, DEFAULT

    if concepts is None:
        return None
    items = [c.strip() for c in (concepts.split(",") if isinstance(concepts, str) else concepts)]
    out: list[str] = []
    for item in (c for c in items if c):
        if item in ("default", "imagenet"):
            out.extend(DEFAULT)
        elif item == "coco":
            out.extend(COCO)
        elif item in BUNDLED or item.endswith(".json"):
            out.append(item)
        else:
            raise InputError(
                f"concepts: {item!r} is neither a bundled vocabulary {BUNDLED}, a preset "
                "(default, coco) nor a .json vocabulary file"
            )
    if not out:
        raise InputError("concepts: empty; name vocabularies or leave it unset for the default")
    return tuple(out)


def keep_sampled(seed: int, sample_id: int, fraction: float) -> bool:
    """Deterministic Bernoulli(fraction) per (seed, sample_id)."""
    h = hashlib.blake2b(f"{seed}:{sample_id}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2**64 < fraction


class PairSource:
    """An iterable of ``PairRecord``; iterate as often as you like (same records).

    Raises:
        InputError: (constructing) ``limit``, ``sample``, ``decode_workers``, ``require``
            or ``concepts`` is invalid.
    """

    kind: str = "source"

    def __init__(
        self,
        spec: str,
        *,
        limit: int | None = None,
        sample: float | None = None,
        seed: int = 0,
        require: str | Sequence[str] | None = None,
        decode_workers: int | None = None,
        concepts: str | Sequence[str] | None = None,
    ) -> None:
        if limit is not None and (not isinstance(limit, int) or limit < 0):
            raise InputError(f"limit must be a non-negative int, got {limit!r}")
        if sample is not None and not (0.0 < float(sample) <= 1.0):
            raise InputError(f"sample must be a fraction in (0, 1], got {sample!r}")
        self.spec = spec
        self.limit = limit
        self.sample = None if sample is None else float(sample)
        self.seed = int(seed)
        self.require = parse_require(require)
        if decode_workers is not None and (
            not isinstance(decode_workers, int) or decode_workers < 0
        ):
            raise InputError(f"decode_workers must be an int >= 0, got {decode_workers!r}")
        self.decode_workers = decode_workers
        """Threads decoding images ahead of the reader (``None``: one per CPU, <= 8; 0 or
        1: decode in the reading thread). Records and report are the same either way."""
        self.report = BadRecordReport()
        self._labeler: ConceptLabeler | None = None
        self.concepts = parse_concepts(concepts)
        """Vocabularies of ``labeler`` (bundled names or JSON paths); ``None``: the default."""

    # -- to implement -------------------------------------------------------
    def _records(self, report: BadRecordReport) -> Iterator[PairRecord | PendingRecord]:
        raise NotImplementedError

    def _content_key(self) -> dict[str, Any]:
        """What identifies the underlying data (file hashes, names, sizes)."""
        raise NotImplementedError

    # -- public -------------------------------------------------------------
    @property
    def labeler(self) -> ConceptLabeler:
        """The caption labeler used by ``require`` and ``labels`` (``concepts``, or the
        default vocabularies)."""
        if self._labeler is None:
            from vlmfast.data.concepts.labeler import ConceptLabeler
            from vlmfast.data.concepts.vocabulary import load_vocabulary

            if self.concepts is None:
                self._labeler = ConceptLabeler.default()
            else:
                self._labeler = ConceptLabeler(load_vocabulary(self.concepts))
        return self._labeler

    def __iter__(self) -> Iterator[PairRecord]:
        return self.records_after(-1)

    def records_after(self, sample_id: int, counted: int = 0) -> Iterator[PairRecord]:
        """Returns the records whose ``sample_id`` is above ``sample_id``, where ``counted``
        records before them count toward ``limit``: how a resumed job continues
        without decoding what it already has (ids increase along the source order;
        records before the point are read but never decoded). ``report`` then
        holds this pass's bad records: past the point, and before it only those
        found without decoding (empty captions, bad lines)."""
        return self.decoded(partial(self.candidates, after=sample_id), counted)

    def decoded(
        self,
        records: Callable[[BadRecordReport], Iterator[PairRecord | PendingRecord]],
        counted: int = 0,
    ) -> Iterator[PairRecord]:
        """Yields ``records(report)`` (e.g. ``candidates``) with pending images decoded on
        this source's ``decode_workers``, into a fresh ``report``, up to ``limit``
        (``counted`` records already handed out count toward it)."""
        report = BadRecordReport()
        self.report = report
        if self.limit is not None and counted >= self.limit:
            return
        workers = resolve_decode_workers(self.decode_workers)
        for n_out, rec in enumerate(decode_in_order(records, report, workers), start=counted + 1):
            report.n_ok += 1
            yield rec
            if self.limit is not None and n_out >= self.limit:
                return

    def candidates(
        self, report: BadRecordReport, after: int = -1
    ) -> Iterator[PairRecord | PendingRecord]:
        """Yields the source's records past id ``after`` that ``sample`` and ``require`` keep,
        images not necessarily decoded (bad images not yet found)."""
        wanted: list[set[str]] = [set(REQUIRE_KINDS[r]) for r in self.require]
        for rec in self._records(report):
            if rec.sample_id <= after:
                continue
            if self.sample is not None and not keep_sampled(self.seed, rec.sample_id, self.sample):
                continue
            if wanted:
                kinds = self.labeler.kinds_in(rec.caption or "")
                if not all(kinds & w for w in wanted):
                    continue
            yield rec

    def fingerprint(self) -> str:
        """Returns the hex sha256 of the data's identity and the selection (sample, seed,
        limit, require)."""
        key = {
            "kind": self.kind,
            "content": self._content_key(),
            "limit": self.limit,
            "sample": self.sample,
            "seed": self.seed if self.sample is not None else None,
            "require": list(self.require),
        }
        if self.concepts is not None:  # absent for the default: older fingerprints stay valid
            key["concepts"] = list(self.concepts)
        return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()

    image_label_basis: str = "caption"
    """Where :meth:`labels` (what an image shows) comes from: ``caption`` here (a plain
    image-caption source knows nothing else about the image); ``instances+caption`` where
    records carry object annotations (COCO); ``scene`` for the synthetic ground truth."""

    def labels(self, records: Sequence[PairRecord]) -> ConceptLabels:
        """Returns what each image shows, as well as this source knows: bool [len(records), C] +
        names + kinds. Here the caption's concepts plus object annotations where present in
        ``meta["objects"]`` (COCO instances); image rows are scored against these."""
        return self.labeler.label_records(records)

    def caption_labels(self, records: Sequence[PairRecord]) -> ConceptLabels:
        """Returns what each caption says (same columns as :meth:`labels`); text rows are scored
        against these."""
        return self.labeler.label_texts([r.caption for r in records])

    has_boxes: bool = False
    """Whether :meth:`boxes` knows where objects are (synthetic scenes, COCO instances)."""
    box_kinds: tuple[str, ...] = ()
    """Concept kinds a box carries (the columns patch-level scoring scores)."""

    def boxes(self, records: Sequence[PairRecord]) -> ObjectBoxes | None:
        """Returns where each record's objects are (boxes normalised to its image, with their
        concepts over the columns of :meth:`labels`); None: this source does not know."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec!r}, limit={self.limit}, sample={self.sample}, require={list(self.require)})"
