"""Folder sources: images + a captions JSONL or CSV file, or images with ``.txt`` sidecars.

Captions file columns / keys: the image path (``image``, ``file``, ``file_name``,
``filename``, ``path`` or ``image_path``; relative to the captions file's folder)
and the caption (``caption``, ``text`` or ``txt``); other keys go to ``meta``.
Records follow the file's line order. Without a captions file, every image in
the folder (sorted by relative path, recursively) with a same-stem ``.txt``
file is a record.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

from vlmfast.data.records import BadRecordReport
from vlmfast.data.sources.base import PairSource
from vlmfast.data.sources.images import IMAGE_EXTENSIONS, decode_image
from vlmfast.data.sources.pending import PendingRecord
from vlmfast.errors import InputError

IMAGE_KEYS = ("image", "file", "file_name", "filename", "path", "image_path")
CAPTION_KEYS = ("caption", "text", "txt")
CAPTION_FILES = ("captions.jsonl", "captions.csv", "metadata.jsonl", "metadata.csv")
FORMAT_DOCS = "docs/getting-started/your-data.md"
"""The page that explains the folder and captions formats (errors about them cite it)."""


def _pick(row: dict[str, Any], keys: tuple[str, ...]) -> tuple[str | None, Any]:
    for k in keys:
        if k in row:
            return k, row[k]
    return None, None


def _check_csv_header(path: Path) -> None:
    """A CSV captions file must name an image column and a caption column."""
    with open(path, encoding="utf-8", errors="replace", newline="") as fh:
        header = next(csv.reader(fh), [])
    columns = [c.strip() for c in header]
    missing = [
        f"an image column (one of {', '.join(keys)})" if kind == "image" else
        f"a caption column (one of {', '.join(keys)})"
        for kind, keys in (("image", IMAGE_KEYS), ("caption", CAPTION_KEYS))
        if not any(k in columns for k in keys)
    ]  # fmt: skip
    if missing:
        raise InputError(
            f"{path}: its columns are {', '.join(columns) or '(none)'}; it needs "
            + " and ".join(missing)
            + f" (see {FORMAT_DOCS})"
        )


def _check_sidecars(folder: Path) -> None:
    """A folder without a captions file needs images with same-stem ``.txt`` captions."""
    images = [q for q in folder.rglob("*") if q.suffix.lower() in IMAGE_EXTENSIONS]
    if not any(q.with_suffix(".txt").is_file() for q in images):
        found = f"{len(images)} images but no .txt caption beside any" if images else "no images"
        raise InputError(
            f"folder source {folder}: no captions: no {' / '.join(CAPTION_FILES)} file and "
            f"{found}; write {folder / 'captions.jsonl'} with one "
            '{"image": "<path relative to it>", "caption": "..."} per line '
            f"(see {FORMAT_DOCS})"
        )


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class FolderSource(PairSource):
    """Images on disk described by a captions file (or ``.txt`` sidecars)."""

    kind = "folder"

    def __init__(self, path: str | Path, **kw: Any) -> None:
        super().__init__(str(path), **kw)
        p = Path(path)
        if p.is_dir():
            found = [p / name for name in CAPTION_FILES if (p / name).is_file()]
            self.captions_file: Path | None = found[0] if found else None
            self.root = p
        elif p.is_file() and p.suffix.lower() in (".jsonl", ".csv"):
            self.captions_file, self.root = p, p.parent
        else:
            raise InputError(
                f"folder source: {path!s} is neither a folder nor a .jsonl/.csv captions "
                f"file (see {FORMAT_DOCS})"
            )
        if self.captions_file is not None and self.captions_file.suffix.lower() == ".csv":
            _check_csv_header(self.captions_file)

    def _rows(self, report: BadRecordReport) -> Iterator[tuple[int, dict[str, Any] | None]]:
        assert self.captions_file is not None
        name = self.captions_file.name
        with open(self.captions_file, encoding="utf-8", errors="replace", newline="") as fh:
            if self.captions_file.suffix.lower() == ".csv":
                for line_no, row in enumerate(csv.DictReader(fh), start=2):
                    yield line_no, dict(row)
                return
            for line_no, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    report.add("bad_line", f"{name}:{line_no}", str(err))
                    yield line_no, None
                    continue
                if not isinstance(row, dict):
                    report.add("bad_line", f"{name}:{line_no}", "not a JSON object")
                    yield line_no, None
                    continue
                yield line_no, row

    def _sidecar_rows(self) -> Iterator[tuple[int, dict[str, Any] | None]]:
        _check_sidecars(self.root)
        images = sorted(
            q for q in self.root.rglob("*") if q.suffix.lower() in IMAGE_EXTENSIONS and q.is_file()
        )
        for k, img in enumerate(images):
            txt = img.with_suffix(".txt")
            caption = txt.read_text(encoding="utf-8", errors="replace") if txt.is_file() else ""
            yield k, {"image": str(img.relative_to(self.root)), "caption": caption}

    def _records(self, report: BadRecordReport) -> Iterator[PendingRecord]:
        rows = self._rows(report) if self.captions_file is not None else self._sidecar_rows()
        where_file = self.captions_file.name if self.captions_file is not None else "sidecar"
        for sample_id, (line_no, row) in enumerate(rows):
            # sample_id counts bad rows too, so one unreadable file never renumbers the rest
            if row is None:
                continue
            where = f"{where_file}:{line_no}"
            ikey, rel = _pick(row, IMAGE_KEYS)
            ckey, caption = _pick(row, CAPTION_KEYS)
            if not rel:
                report.add("bad_line", where, f"no image column (one of {IMAGE_KEYS})")
                continue
            if ckey is None:
                report.add(
                    "bad_line", f"{where} ({rel})", f"no caption key (one of {CAPTION_KEYS})"
                )
                continue
            caption = "" if caption is None else str(caption).strip()
            if not caption:
                report.add("empty_caption", f"{where} ({rel})")
                continue
            meta = {k: v for k, v in row.items() if k not in (ikey, ckey)}
            meta["file"] = str(rel)
            yield PendingRecord(
                sample_id,
                partial(decode_image, self.root / str(rel)),
                caption,
                meta,
                where=f"{where} ({rel})",
            )

    def _content_key(self) -> dict[str, Any]:
        if self.captions_file is not None:
            return {"captions": _file_digest(self.captions_file)}
        names = sorted(
            (str(q.relative_to(self.root)), q.stat().st_size)
            for q in self.root.rglob("*")
            if q.is_file()
        )
        return {"files": hashlib.sha256(json.dumps(names).encode()).hexdigest()}
