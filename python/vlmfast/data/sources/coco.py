"""COCO captions (``captions_*.json``): several captions per image, optional
instance annotations (``instances_*.json``) as object labels.

Order: images by ``id``, then each image's captions by annotation ``id``; one
record per (image, caption), or one per image with ``captions="first"``.
``meta`` holds ``image_id``, ``caption_id``, ``caption_index``, ``file`` and,
with instances, ``objects`` (sorted category names present in the image).

Default locations, when not given: images in ``<root>/<split>`` where the
captions file is ``<root>/annotations/captions_<split>.json`` (else next to the
captions file); instances in ``annotations/instances_<split>.json`` if it exists.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlmfast.data.records import BadRecordReport, PairRecord
from vlmfast.data.sources.base import PairSource
from vlmfast.data.sources.folder import _file_digest
from vlmfast.data.sources.images import decode_image
from vlmfast.data.sources.pending import LoadOnce, PendingRecord
from vlmfast.errors import InputError

if TYPE_CHECKING:
    from vlmfast.data.object_boxes import ObjectBoxes


def _load_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise InputError(f"coco source: cannot read {what} {path}: {err}") from err
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise InputError(
            f"coco source: {path} is not a COCO {what} file (needs 'images' and 'annotations')"
        )
    return data


class CocoSource(PairSource):
    """COCO-format captions with optional instance labels."""

    kind = "coco"

    def __init__(
        self,
        captions: str | Path,
        *,
        images: str | Path | None = None,
        instances: str | Path | None = None,
        captions_per_image: str = "all",
        **kw: Any,
    ) -> None:
        super().__init__(str(captions), **kw)
        if captions_per_image not in ("all", "first"):
            raise InputError(
                f"coco source: captions={captions_per_image!r}; expected 'all' or 'first'"
            )
        self.captions_path = Path(captions)
        if not self.captions_path.is_file():
            raise InputError(f"coco source: no captions file {captions!s}")
        m = re.match(r"captions_(.+)\.json$", self.captions_path.name)
        split = m.group(1) if m else None
        parent = self.captions_path.parent
        if images is None:
            guess = parent.parent / split if split else None
            images = guess if guess is not None and guess.is_dir() else parent
        self.images_dir = Path(images)
        if instances is None and split:
            guess_inst = parent / f"instances_{split}.json"
            instances = guess_inst if guess_inst.is_file() else None
        self.instances_path = Path(instances) if instances is not None else None
        self.captions_per_image = captions_per_image

    @property
    def image_label_basis(self) -> str:  # type: ignore[override]
        """``instances+caption`` with an instances file, else ``caption``."""
        return "instances+caption" if self.instances_path is not None else "caption"

    @property
    def has_boxes(self) -> bool:  # type: ignore[override]
        """With an instances file: its boxes."""
        return self.instances_path is not None

    box_kinds = ("object",)

    def _instances_by_image(
        self,
    ) -> tuple[dict[int, list[str]], dict[int, list[list[Any]]], dict[int, tuple[int, int]]]:
        """Per image id: sorted category names, ``[name, x, y, w, h]`` boxes (pixels, by
        annotation id), and ``(width, height)`` where the instances file gives them."""
        if self.instances_path is None:
            return {}, {}, {}
        data = _load_json(self.instances_path, "instances")
        names = {c["id"]: c["name"] for c in data.get("categories", [])}
        found: dict[int, set[str]] = defaultdict(set)
        boxes: dict[int, list[list[Any]]] = defaultdict(list)
        for ann in sorted(data["annotations"], key=lambda a: int(a.get("id", 0))):
            name = names.get(ann.get("category_id"))
            if name is not None:
                found[int(ann["image_id"])].add(name)
                bbox = ann.get("bbox")
                if isinstance(bbox, list) and len(bbox) == 4:
                    boxes[int(ann["image_id"])].append([name, *(float(v) for v in bbox)])
        sizes = {
            int(im["id"]): (int(im["width"]), int(im["height"]))
            for im in data["images"]
            if im.get("width") and im.get("height")
        }
        return {k: sorted(v) for k, v in found.items()}, dict(boxes), sizes

    def boxes(self, records: Sequence[PairRecord]) -> ObjectBoxes | None:
        """The instance boxes (``meta["boxes"]``: ``[name, x, y, w, h]`` pixels) normalised
        by the image's width and height (``meta["width"/"height"]``, else the decoded
        image's size), each with its object concept; categories matching no concept of
        the vocabulary are left out."""
        if self.instances_path is None:
            return None
        import numpy as np

        from vlmfast.data.object_boxes import ObjectBoxes

        c = len(self.labeler.names)
        rec_of, xy, cols = [], [], []
        for r, rec in enumerate(records):
            w = rec.meta.get("width") or (rec.image.size[0] if rec.image is not None else 0)
            h = rec.meta.get("height") or (rec.image.size[1] if rec.image is not None else 0)
            for name, x, y, bw, bh in rec.meta.get("boxes", ()):
                ci = self.labeler.object_column(str(name))
                if ci is None or not w or not h:
                    continue
                rec_of.append(r)
                xy.append([x / w, y / h, (x + bw) / w, (y + bh) / h])
                cols.append(ci)
        concepts = np.zeros((len(cols), c), dtype=bool)
        concepts[np.arange(len(cols)), cols] = True
        boxes = np.clip(np.asarray(xy, dtype=np.float32).reshape(-1, 4), 0.0, 1.0)
        return ObjectBoxes(np.asarray(rec_of, dtype=np.int64), boxes, concepts)

    def _records(self, report: BadRecordReport) -> Iterator[PendingRecord]:
        data = _load_json(self.captions_path, "captions")
        objects, boxes, sizes = self._instances_by_image()
        files = {int(im["id"]): im.get("file_name", "") for im in data["images"]}
        caps: dict[int, list[tuple[int, str]]] = defaultdict(list)
        for ann in data["annotations"]:
            caps[int(ann["image_id"])].append((int(ann.get("id", 0)), str(ann.get("caption", ""))))
        sample_id = -1
        for image_id in sorted(files):
            entries = sorted(caps.get(image_id, []))
            if self.captions_per_image == "first":
                entries = entries[:1]
            if not entries:
                sample_id += 1
                report.add("empty_caption", f"image_id {image_id}", "no caption annotation")
                continue
            # the captions of one image share one decode
            load = LoadOnce(partial(decode_image, self.images_dir / files[image_id]))
            for k, (cap_id, caption) in enumerate(entries):
                sample_id += 1
                where = f"image_id {image_id} caption_id {cap_id}"
                if not caption.strip():
                    report.add("empty_caption", where)
                    continue
                meta: dict[str, Any] = {
                    "image_id": image_id,
                    "caption_id": cap_id,
                    "caption_index": k,
                    "file": files[image_id],
                }
                if self.instances_path is not None:
                    meta["objects"] = objects.get(image_id, [])
                    meta["boxes"] = boxes.get(image_id, [])
                    if image_id in sizes:
                        meta["width"], meta["height"] = sizes[image_id]
                yield PendingRecord(
                    sample_id, load, caption.strip(), meta, where=f"{where} ({files[image_id]})"
                )

    def _content_key(self) -> dict[str, Any]:
        return {
            "captions": _file_digest(self.captions_path),
            "instances": _file_digest(self.instances_path) if self.instances_path else None,
            "captions_per_image": self.captions_per_image,
        }
