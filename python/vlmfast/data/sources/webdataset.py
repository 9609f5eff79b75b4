"""WebDataset tar shards in the CC3M layout: members ``<key>.jpg`` + ``<key>.txt``
(+ optional ``<key>.json``), grouped by key, read as a stream (no extraction).

Shards: a ``.tar`` file, a folder of ``*.tar`` (sorted), a glob, or brace
ranges like ``cc3m-{00000..00099}.tar``. The key of a member is its path up to
the first dot of its file name (the WebDataset convention). A member that
cannot be read, a sample without image or caption, and a truncated shard are
counted; reading goes on with the next sample or shard.
"""

from __future__ import annotations

import glob
import hashlib
import json
import re
import tarfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

from vlmfast.data.records import BadRecordReport
from vlmfast.data.sources.base import PairSource
from vlmfast.data.sources.images import decode_image
from vlmfast.data.sources.pending import PendingRecord
from vlmfast.errors import InputError

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
CAPTION_EXTS = ("txt", "caption", "text")
_BRACE = re.compile(r"\{(\d+)\.\.(\d+)\}")


def expand_braces(pattern: str) -> list[str]:
    """``a-{000..002}.tar`` -> ``[a-000.tar, a-001.tar, a-002.tar]`` (zero padding kept)."""
    m = _BRACE.search(pattern)
    if m is None:
        return [pattern]
    lo, hi = m.group(1), m.group(2)
    width = len(lo)
    out = []
    for k in range(int(lo), int(hi) + 1):
        out.extend(expand_braces(pattern[: m.start()] + str(k).zfill(width) + pattern[m.end() :]))
    return out


def resolve_shards(spec: str) -> list[Path]:
    """The shard files a spec names, in order."""
    p = Path(spec)
    if p.is_dir():
        shards = sorted(p.glob("*.tar"))
    elif _BRACE.search(spec):
        shards = [Path(s) for s in expand_braces(spec)]
    elif any(ch in spec for ch in "*?["):
        shards = [Path(s) for s in sorted(glob.glob(spec))]
    else:
        shards = [p]
    if not shards:
        raise InputError(f"webdataset source: no .tar shards match {spec!r}")
    return shards


def _split_key(name: str) -> tuple[str, str]:
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    key = f"{folder}/{stem}" if folder else stem
    return key, ext.lower() if dot else ""


class WebDatasetSource(PairSource):
    """Streaming reader of WebDataset shards (image + caption per key)."""

    kind = "webdataset"

    def __init__(self, shards: str, **kw: Any) -> None:
        super().__init__(shards, **kw)
        self.shards = resolve_shards(shards)

    def _shard_samples(
        self, shard: Path, report: BadRecordReport
    ) -> Iterator[tuple[str, dict[str, bytes]]]:
        """(key, {ext: bytes}) per sample of one shard, in member order."""
        current: str | None = None
        parts: dict[str, bytes] = {}
        try:
            with tarfile.open(shard, mode="r|*") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    key, ext = _split_key(member.name)
                    if key != current:
                        if current is not None:
                            yield current, parts
                        current, parts = key, {}
                    try:
                        fh = tar.extractfile(member)
                        if fh is None:
                            raise OSError("not extractable")
                        parts[ext] = fh.read()
                    except (OSError, tarfile.TarError) as err:
                        report.add("unreadable_member", f"{shard.name}:{member.name}", str(err))
                        parts.setdefault("__bad__", b"")
        except FileNotFoundError:
            report.add("missing_file", str(shard), "no such shard")
            return
        except (OSError, tarfile.TarError, EOFError) as err:
            report.add(
                "unreadable_member",
                f"{shard.name} (after {current})",
                f"truncated or corrupt shard: {err}",
            )
        if current is not None:
            yield current, parts

    def _records(self, report: BadRecordReport) -> Iterator[PendingRecord]:
        sample_id = -1
        for shard in self.shards:
            for key, parts in self._shard_samples(shard, report):
                sample_id += 1
                where = f"{shard.name}:{key}"
                img_ext = next((e for e in IMAGE_EXTS if e in parts), None)
                cap_ext = next((e for e in CAPTION_EXTS if e in parts), None)
                if img_ext is None:
                    if "__bad__" not in parts:
                        report.add("missing_file", where, "no image member")
                    continue
                caption = (
                    parts[cap_ext].decode("utf-8", errors="replace").strip() if cap_ext else ""
                )
                if not caption:
                    if "__bad__" not in parts:
                        report.add("empty_caption", where)
                    continue
                meta: dict[str, Any] = {"key": key, "shard": shard.name}
                if "json" in parts:
                    try:
                        extra = json.loads(parts["json"])
                        if isinstance(extra, dict):
                            meta.update({k: v for k, v in extra.items() if k not in meta})
                    except ValueError:
                        pass  # the sample itself is fine; its optional metadata is not
                yield PendingRecord(
                    sample_id, partial(decode_image, parts[img_ext]), caption, meta, where=where
                )

    def _content_key(self) -> dict[str, Any]:
        names = [(s.name, s.stat().st_size if s.is_file() else None) for s in self.shards]
        return {"shards": hashlib.sha256(json.dumps(names).encode()).hexdigest()}
