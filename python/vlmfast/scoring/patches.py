"""``tokens="patch"``: image token rows labelled by what their patch shows.

Each patch row of an image token hook is scored against the concepts of the object
boxes that hit its patch (``vlmfast.store.patch_grid``: the patch holds a box
centre, or the box covers at least a quarter of it), so a unit is scored as a
detector (as saev and NetDissect do). CLS and pooled rows are not patches; text rows
are not scored in this mode. Only the concept kinds boxes carry (``boxes.kinds`` in
the store attrs: shape/color/size for synthetic, objects for COCO) are scored.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vlmfast.errors import InputError
from vlmfast.scoring.concepts import ConceptSet
from vlmfast.store.patch_grid import PatchGrid, patch_labels
from vlmfast.store.schema import (
    ATTR_BOXES,
    ATTR_TOWERS,
    BOXES_KINDS,
    TOWER_IMAGE,
    TOWER_PATCH_SIZE,
    hook_modality,
)

PATCH_MODE = "patch"


def check_patch_hook(position: np.ndarray, hook: str) -> None:
    """An error unless ``hook`` is an image hook cached at token positions."""
    if hook_modality(hook) != "image":
        raise InputError(
            f"tokens='patch' scores image patch rows, but {hook} is not an image tower hook; "
            "pass an image token hook (e.g. image.blocks.N.resid_post) or another --tokens"
        )
    if not bool((position >= 0).any()):
        raise InputError(
            f"tokens='patch': {hook} has no token rows (only pooled rows, position -1); "
            "re-cache it with --positions all, or score it with tokens='pooled'"
        )


def patch_rows(
    store: Any, hook: str, index: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, ConceptSet]:
    """``(rows, sample, modality, labels, concepts)`` of ``hook``'s patch rows: store row
    numbers, their sample ids and modality (0), bool labels ``[rows, C']`` over the
    box-carried concepts ``concepts``."""
    attrs = getattr(store, "attrs", None) or {}
    boxes = store.boxes if attrs.get(ATTR_BOXES) else None
    if boxes is None:
        raise InputError(
            f"tokens='patch' on {hook}: the store {getattr(store, 'path', '')} has no object "
            "boxes (labels/boxes): it was cached from a source without boxes, or by a vlmfast "
            "that did not store them. Re-cache it from a source with boxes (synthetic:..., "
            "COCO with its instances_*.json) at --positions all, or score with --tokens max"
        )
    tower = (attrs.get(ATTR_TOWERS) or {}).get(TOWER_IMAGE)
    if not tower or not tower.get(TOWER_PATCH_SIZE):
        raise InputError(
            f"tokens='patch' on {hook}: the store does not record the image tower's patch "
            "grid (towers.image); re-cache it with this vlmfast"
        )
    grid = PatchGrid.from_tower(tower)
    labels = store.labels
    position = np.asarray(index.position)
    modality = np.asarray(index.modality, dtype=np.uint8)
    sample = np.asarray(index.sample, dtype=np.int64)
    image = modality == 0
    rows = np.flatnonzero(image & np.isin(sample, np.asarray(labels.sample, dtype=np.int64)))
    lab, keep = patch_labels(sample[rows], position[rows], boxes, grid)
    rows = rows[keep]
    kinds = set(attrs[ATTR_BOXES].get(BOXES_KINDS) or labels.kinds)
    cols = [i for i, k in enumerate(labels.kinds) if k in kinds]
    concepts = ConceptSet.make([labels.names[i] for i in cols], [labels.kinds[i] for i in cols])
    return rows.astype(np.int64), sample[rows], modality[rows], lab[:, cols], concepts
