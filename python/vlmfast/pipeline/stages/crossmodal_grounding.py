"""Grounding heads for the ``cross-modal`` stage (``vlmfast.crossmodal.grounding*``).

The images come from ``[crossmodal].grounding_data`` (none: ``[data]``). A source
without boxes: when it is ``[data]`` (the default) the stage **skips** grounding and
records and prints the reason naming the source; when ``grounding_data`` names it, the
stage raises an error naming it (the user asked for grounding on that source).

Recorded: the top heads ranked by their named-object attention (against the other
objects' boxes where images hold several objects, else random boxes), the causal test
(the top ``grounding_heads`` patched from clean into images where the named object is
recolored: recovered fraction of the matched logit, interval, random-head null), and
``grounding/L<l>H<h>.png``: each top head's CLS attention over a few images.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from vlmfast.errors import InputError
from vlmfast.pipeline.context import StageContext

TOP = 6
"""Heads listed in the table."""
MAPS = 3
"""Heads drawn, and images per drawing."""
TILE = 96


def grounding(ctx: StageContext) -> dict[str, Any]:
    """The grounding result (or ``{"skipped": reason}``).

    Raises:
        InputError: ``[crossmodal].grounding_data`` names a source without boxes.
    """
    from vlmfast.crossmodal import (
        grounding_inputs,
        grounding_patching,
        grounding_scores,
        ranked_table,
        recolor_named,
        top_heads,
    )
    from vlmfast.data import open_source

    cfg, cm = ctx.config, ctx.config.crossmodal
    if cm.grounding_images < 1:
        return {"skipped": "[crossmodal] grounding_images = 0"}
    spec = cm.grounding_data or cfg.data.spec
    source = open_source(spec)
    if not getattr(source, "has_boxes", False):
        why = f"the source {spec!r} has no object boxes"
        if cm.grounding_data:
            raise InputError(
                f"[crossmodal] grounding_data: {why}; grounding needs a source with boxes "
                "(synthetic, COCO instances): name one, or leave grounding_data out"
            )
        ctx.log(f"  grounding skipped: {why} (set [crossmodal] grounding_data to one with boxes)")
        return {"skipped": why, "source": spec}
    pair = ctx.pair()
    gi = grounding_inputs(pair, source, n=cm.grounding_images)
    rank_by = "other_objects" if any(len(b) > 1 for b in gi.boxes) else "random_boxes"
    scores = grounding_scores(
        pair, gi.pixels, gi.boxes, gi.names, n_random=8, n_boot=cm.n_boot,
        n_perm=max(cm.n_null, 20), rank_by=rank_by, seed=cfg.run.seed,
    )  # fmt: skip
    k = min(cm.grounding_heads, len(scores.ranked))
    heads = top_heads(scores, k)
    corrupt = recolor_named(gi.pixels, gi.boxes, gi.names)
    patch = grounding_patching(
        pair, gi.pixels, corrupt, gi.captions, heads, n_null=cm.n_null, n_boot=cm.n_boot,
        seed=cfg.run.seed,
    )  # fmt: skip
    table = [dict(r) for r in ranked_table(scores, top=TOP)]
    maps = attention_maps(ctx, pair, gi, scores.ranked[:MAPS])
    out = {
        "source": spec,
        "n_images": scores.n_images,
        "skipped_records": gi.skipped,
        "rank_by": rank_by,
        "table": table,
        "patching": patch.to_dict(),
        "maps": maps,
    }
    from vlmfast.pipeline.stages.crossmodal_text import format_grounding

    ctx.log(format_grounding(out))
    return out


def _tile(px: npt.NDArray[np.float64], att: npt.NDArray[np.float64], box: Any) -> Any:
    """One model-input image (min-max scaled) with the head's CLS attention over its patches
    in red and the named object's box outlined."""
    from PIL import Image, ImageDraw

    img = np.moveaxis(px, 0, -1)
    img = (img - img.min()) / max(float(img.max() - img.min()), 1e-9)
    side = round(float(np.sqrt(att.size)))
    heat = att.reshape(side, side) / max(float(att.max()), 1e-12)
    up = np.kron(heat, np.ones((TILE // side + 1, TILE // side + 1)))[:TILE, :TILE]
    base = np.asarray(Image.fromarray((img * 255).astype(np.uint8)).resize((TILE, TILE)))
    red = np.zeros_like(base)
    red[..., 0] = 255
    a = 0.8 * up[..., None]
    im = Image.fromarray((base * (1 - a) + red * a).astype(np.uint8))
    x0, y0, x1, y1 = (float(v) * TILE for v in box)
    ImageDraw.Draw(im).rectangle([x0, y0, x1 - 1, y1 - 1], outline=(0, 200, 255))
    return im


def attention_maps(
    ctx: StageContext, pair: Any, gi: Any, heads: list[tuple[int, int]]
) -> list[dict[str, Any]]:
    """Writes ``grounding/L<l>H<h>.png`` per head (its CLS attention over the first
    :data:`MAPS` images); returns ``[{"layer", "head", "png", "names"}]``."""
    from PIL import Image

    from vlmfast.crossmodal.grounding import head_patch_attention
    from vlmfast.store.patch_grid import PatchGrid

    c = pair.config.image
    grid = PatchGrid(int(c.image_size), int(c.patch_size), bool(c.class_token))
    n = min(MAPS, len(gi.names))
    cls = head_patch_attention(pair, gi.pixels[:n], grid)["cls"]  # [n, L, H, P]
    px = gi.pixels[:n].double().numpy()
    folder = ctx.dir / "grounding"
    folder.mkdir(exist_ok=True)
    out = []
    for layer, head in heads:
        tiles = []
        for i in range(n):
            box = next(b for name, b in gi.boxes[i] if name == gi.names[i])
            tiles.append(_tile(px[i], cls[i, layer, head], box))
        sheet = Image.new("RGB", (n * (TILE + 2), TILE), "white")
        for i, t in enumerate(tiles):
            sheet.paste(t, (i * (TILE + 2), 0))
        name = f"L{layer}H{head}.png"
        sheet.save(folder / name, format="PNG", optimize=False)
        out.append({"layer": layer, "head": head, "png": f"grounding/{name}",
                    "names": list(gi.names[:n])})  # fmt: skip
    return out
