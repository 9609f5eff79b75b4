"""Exemplars of the cross-modal stage's top bimodal features: the images where each fires
most (a PNG strip, ``exemplars/<setting>_f<feature>.png``) and the captions where it
fires most (in the result)."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from vlmfast.pipeline.context import StageContext

TILE = 64


def records_by_id(spec: str, wanted: set[int]) -> dict[int, Any]:
    """The records of ``spec`` whose sample ids are in ``wanted`` (read in order)."""
    from vlmfast.data import open_source

    found: dict[int, Any] = {}
    if not wanted:
        return found
    last = max(wanted)
    for r in open_source(spec):
        if r.sample_id in wanted:
            found[int(r.sample_id)] = r
        if len(found) == len(wanted) or r.sample_id >= last:
            break
    return found


def strip(images: list[Any]) -> Any:
    """The images side by side, each a centre-cropped ``TILE`` x ``TILE`` square."""
    from PIL import Image

    out = Image.new("RGB", (TILE * max(1, len(images)) + 2 * len(images), TILE), "white")
    for i, image in enumerate(images):
        im = image.convert("RGB")
        w, h = im.size
        s = min(w, h)
        im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
        out.paste(im.resize((TILE, TILE)), (i * (TILE + 2), 0))
    return out


def write_exemplars(
    ctx: StageContext, shared: dict[str, Any], samples: npt.NDArray[np.int64]
) -> None:
    """Adds ``image_samples``, ``image_strip``, ``caption_samples`` and ``captions`` to each
    listed bimodal feature of ``shared`` and writes its PNG strip."""
    feats = [
        (setting, f)
        for setting, entry in shared.items()
        for f in (entry.get("all") or {}).get("bimodal") or []
    ]
    wanted = {int(samples[i]) for _, f in feats for i in f["image_top"] + f["text_top"]}
    records = records_by_id(ctx.config.data.spec, wanted)
    folder = ctx.dir / "exemplars"
    for setting, f in feats:
        f["image_samples"] = [int(samples[i]) for i in f["image_top"]]
        f["caption_samples"] = [int(samples[i]) for i in f["text_top"]]
        f["captions"] = [
            str(records[s].caption) if s in records else "" for s in f["caption_samples"]
        ]
        images = [records[s].image for s in f["image_samples"] if s in records]
        f["image_strip"] = None
        if images:
            folder.mkdir(exist_ok=True)
            name = f"{setting}_f{f['feature']}.png"
            strip(images).save(folder / name, format="PNG", optimize=False)
            f["image_strip"] = f"exemplars/{name}"
