"""A source over any Python iterable of ``(image, caption)`` or ``(image, caption, meta)``.

``image`` may be a ``PIL.Image``, a path, or encoded bytes. A re-iterable input
(a list, a dataset object) can be read many times and fingerprinted up front; a
one-shot iterator (a generator) is read once, and its fingerprint is the hash of
what that pass saw (available after the pass).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from PIL import Image

from vlmfast.data.records import BadRecordReport, PairRecord
from vlmfast.data.sources.base import PairSource
from vlmfast.data.sources.images import decode_image
from vlmfast.errors import InputError


def _coerce_image(obj: Any) -> tuple[Image.Image | None, str, str]:
    if isinstance(obj, Image.Image):
        try:
            obj.load()
            return (obj if obj.mode == "RGB" else obj.convert("RGB")), "", ""
        except (OSError, ValueError) as err:
            return None, "corrupt_image", f"{type(err).__name__}: {err}"
    if isinstance(obj, (str, Path)):
        return decode_image(Path(obj))
    if isinstance(obj, (bytes, bytearray)):
        return decode_image(bytes(obj))
    return None, "corrupt_image", f"not an image: {type(obj).__name__}"


class IterableSource(PairSource):
    """Records from an in-memory iterable."""

    kind = "iterable"

    def __init__(self, items: Iterable[Any], **kw: Any) -> None:
        super().__init__(f"<iterable {type(items).__name__}>", **kw)
        self.items = items
        self.one_shot = iter(items) is items
        self._consumed = False
        self._seen_digest: str | None = None

    def _records(self, report: BadRecordReport) -> Iterator[PairRecord]:
        if self.one_shot and self._consumed:
            raise InputError(
                "iterable source: the input is a one-shot iterator and was already read"
            )
        self._consumed = True
        digest = hashlib.sha256()
        for sample_id, item in enumerate(self.items):
            where = f"item {sample_id}"
            if not isinstance(item, (tuple, list)) or len(item) not in (2, 3):
                report.add(
                    "bad_item",
                    where,
                    f"expected (image, caption[, meta]), got {type(item).__name__}",
                )
                continue
            caption = "" if item[1] is None else str(item[1]).strip()
            if not caption:
                report.add("empty_caption", where)
                continue
            image, reason, detail = _coerce_image(item[0])
            if image is None:
                report.add(reason, where, detail)
                continue
            meta = dict(item[2]) if len(item) == 3 and isinstance(item[2], dict) else {}
            digest.update(caption.encode())
            digest.update(image.tobytes())
            yield PairRecord(sample_id, image, caption, meta)
        self._seen_digest = digest.hexdigest()

    def _content_key(self) -> dict[str, Any]:
        if self._seen_digest is None:
            if self.one_shot:
                raise InputError(
                    "iterable source: a one-shot iterator's fingerprint is known only after it was read"
                )
            for _ in self._records(BadRecordReport()):
                pass
        return {"items": self._seen_digest}
