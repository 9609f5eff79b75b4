"""Image-side counterfactuals of synthetic scenes: the same scene with one attribute changed.

    cf = counterfactual_scene(scene, "red")           # the red object turns green
    cf = counterfactual_scene(scene, "circle")        # the circle becomes a square
    cf = counterfactual_scene(scene, "left of", caption=caption_dict)  # subject and object
                                                      # of the caption's relation swap cells
    images = counterfactual_images(records, "red")    # PIL images, re-rendered

The change is made on the scene and re-rendered by the benchmark's renderer
(``render.render_scene``), so the counterfactual differs from the clean image only in
the changed object's pixels (colour / shape) or the two objects' cells (position swap):

* **color** (``concept`` one of ``spec.COLORS``): every object of that colour takes
  ``to`` (default: the next colour of ``spec.COLORS`` that no object of the scene has,
  so colours stay distinct within the scene);
* **shape** (one of ``spec.SHAPES``): the same with shapes;
* **size** (one of ``spec.SIZES``): the object changes to the other size, centred in its cell;
* **relation** (one of ``spec.RELATIONS``): the two objects the relation relates (the
  caption's subject and object, else the first pair of objects for which it holds) swap
  cells, so "A left of B" becomes "B left of A" and nothing else changes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from vlmfast.data.synthetic import spec
from vlmfast.data.synthetic.render import render_scene
from vlmfast.data.synthetic.scene import Scene, SceneObject
from vlmfast.errors import InputError

CHANGES = ("color", "shape", "size", "relation")


def concept_kind(concept: str) -> str:
    """Which attribute ``concept`` is (one of :data:`CHANGES`), or InputError."""
    for kind, words in (
        ("color", spec.COLORS), ("shape", spec.SHAPES), ("size", spec.SIZES),
        ("relation", spec.RELATIONS),
    ):  # fmt: skip
        if concept in words:
            return kind
    raise InputError(
        f"an image counterfactual needs a synthetic color, shape, size or relation; "
        f"{concept!r} is none of {[*spec.COLORS, *spec.SHAPES, *spec.SIZES, *spec.RELATIONS]}"
    )


def swap_target(concept: str, scene: Scene | None = None) -> str:
    """The value ``concept`` is changed to: the next of its kind (cyclic) that no object
    of ``scene`` has (colours and shapes are distinct within a scene)."""
    kind = concept_kind(concept)
    words = {"color": spec.COLORS, "shape": spec.SHAPES, "size": spec.SIZES}.get(kind)
    if words is None:
        return spec.INVERSE_RELATION[concept]
    used = {getattr(o, kind) for o in scene.objects} if scene is not None else set()
    for step in range(1, len(words)):
        cand = words[(words.index(concept) + step) % len(words)]
        if kind == "size" or cand not in used:
            return cand
    raise InputError(f"scene has every {kind}: {concept!r} has nothing to change to")


def _in_cell(obj: SceneObject, row: int, col: int, size: str | None = None) -> SceneObject:
    """``obj`` moved to cell ``(row, col)`` (and resized), keeping its offset from the
    cell's centred position."""
    old_side, new_side = spec.SIZE_PX[obj.size], spec.SIZE_PX[size or obj.size]
    dy = obj.y0 - (obj.row * spec.CELL + (spec.CELL - old_side) // 2)
    dx = obj.x0 - (obj.col * spec.CELL + (spec.CELL - old_side) // 2)
    y0 = row * spec.CELL + (spec.CELL - new_side) // 2 + dy
    x0 = col * spec.CELL + (spec.CELL - new_side) // 2 + dx
    return replace(obj, row=row, col=col, y0=int(y0), x0=int(x0), size=size or obj.size)


def _relation_pair(scene: Scene, rel: str, caption: Mapping[str, Any] | None) -> tuple[int, int]:
    """The (subject, object) indices the relation relates: the caption's mentions when it
    states ``rel``, else the first pair for which it holds."""
    objs = scene.objects
    if caption and caption.get("relation") == rel and len(caption.get("mentions", [])) >= 2:
        idx = []
        for m in caption["mentions"][:2]:
            hits = [
                i for i, o in enumerate(objs)
                if all(m.get(k) in (None, getattr(o, k)) for k in ("color", "shape", "size"))
            ]  # fmt: skip
            if len(hits) == 1:
                idx.append(hits[0])
        if len(idx) == 2 and idx[0] != idx[1]:
            return idx[0], idx[1]
    for i, r, j in scene.relations():
        if r == rel:
            return i, j
    raise InputError(f"no two objects of the scene stand in the relation {rel!r}")


def counterfactual_scene(
    scene: Scene, concept: str, *, to: str | None = None, caption: Mapping[str, Any] | None = None
) -> Scene:
    """``scene`` with ``concept`` changed (see the module doc); ``to`` picks the new colour /
    shape / size (default :func:`swap_target`); ``caption`` (``meta["caption"]``) names the
    relation's objects.

    Raises:
        InputError: no object has ``concept`` (or no pair stands in the relation), or
            ``to`` is not of the concept's kind or already in the scene.
    """
    kind = concept_kind(concept)
    objs = list(scene.objects)
    if kind == "relation":
        i, j = _relation_pair(scene, concept, caption)
        a, b = objs[i], objs[j]
        objs[i], objs[j] = _in_cell(a, b.row, b.col), _in_cell(b, a.row, a.col)
        return Scene(tuple(objs))
    hits = [k for k, o in enumerate(objs) if getattr(o, kind) == concept]
    if not hits:
        raise InputError(f"no object of the scene is {concept!r}: nothing to change")
    new = to if to is not None else swap_target(concept, scene)
    if concept_kind(new) != kind or new == concept:
        raise InputError(f"to={new!r} must be another {kind} than {concept!r}")
    if kind != "size" and any(getattr(o, kind) == new for o in objs):
        raise InputError(f"to={new!r}: the scene already has a {new} object ({kind}s are distinct)")
    for k in hits:
        o = objs[k]
        if kind == "size":
            objs[k] = _in_cell(o, o.row, o.col, new)
        else:
            objs[k] = replace(o, color=new) if kind == "color" else replace(o, shape=new)
    return Scene(tuple(objs))


def scene_of(meta: Mapping[str, Any]) -> Scene:
    """The scene a synthetic record's ``meta["objects"]`` describes, or InputError."""
    objects = meta.get("objects") if meta else None
    if not objects:
        raise InputError(
            "an image counterfactual needs the synthetic ground truth in the record's meta "
            "(meta['objects']): use a synthetic: source, or a text-side corruption"
        )
    out = []
    for o in objects:
        y0, x0, _, _ = o["box"]
        out.append(SceneObject(o["shape"], o["color"], o["size"], o["row"], o["col"], y0, x0))
    return Scene(tuple(out))


def counterfactual_images(
    records: Sequence[Any], concept: str, *, to: str | None = None
) -> list[Any]:
    """One counterfactual PIL image per synthetic record (its scene with ``concept``
    changed, :func:`counterfactual_scene`).

    Rendered as the pixel difference of the two scenes added to the record's own image,
    so the source's pixel noise stays as it was (exact without noise and texture; with
    texture the changed pixels are drawn untextured).
    """
    from PIL import Image

    out = []
    for rec in records:
        scene = scene_of(rec.meta)
        caption = rec.meta.get("caption")
        try:
            cf = counterfactual_scene(scene, concept, to=to, caption=caption)
        except InputError as err:
            raise InputError(f"record {rec.sample_id}: {err}") from err
        base = np.asarray(rec.image.convert("RGB"), dtype=np.int16)
        diff = render_scene(cf).astype(np.int16) - render_scene(scene).astype(np.int16)
        out.append(Image.fromarray(np.clip(base + diff, 0, 255).astype(np.uint8)))
    return out


__all__ = [
    "CHANGES",
    "concept_kind",
    "counterfactual_images",
    "counterfactual_scene",
    "scene_of",
    "swap_target",
]
