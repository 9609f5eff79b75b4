"""Matched image/text rows of a store: one row per sample and tower, with both label sets.

A shared dictionary is trained and analysed on *matched pairs*: row ``i`` of the image
array and row ``i`` of the text array are the image and the caption of one sample.
:func:`store_pairs` reads two hooks of equal width (``image.embed`` and ``text.embed`` by
default; any two the caller names) and lines their rows up by sample id:

* a hook with one row per sample (the embeddings, or a store cached with ``--positions
  cls``/``eot``/``pooled``) is used as is;
* a hook with several rows per sample (token rows) is pooled per sample: ``mean``,
  ``first`` (the CLS row of an image tower with a class token, the first text token) or
  ``last`` (the last stored row: the EOT row of a caption);
* a store cached with ``joint.embed`` (one array holding both towers' embeddings, the
  modality in its index) serves ``image.embed`` / ``text.embed`` from that array;
* the labels are the store's: ``image_labels`` what each image shows, ``text_labels``
  what each caption says (the image labels, with a warning, for stores without them).

Only samples with a row in both hooks and a label row are kept (``n_dropped`` counts
the others).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from vlmfast.errors import InputError, ShapeError

POOLS = ("mean", "first", "last")
"""How the token rows of one sample become one row (:func:`store_pairs`)."""
CACHE_BOTH = (
    "cache both towers into one store, e.g. `vlmfast cache --hooks image.embed,text.embed` "
    "(or `--hooks joint.embed`)"
)

Array = npt.NDArray[np.float64]


@dataclass
class StorePairs:
    """Matched rows of two hooks of a store and the labels of their samples."""

    image_rows: Array
    """``[n, d]`` one image-side row per sample (float64)."""
    text_rows: Array
    """``[n, d]`` the caption-side row of the same samples."""
    sample: npt.NDArray[np.int64]
    """``[n]`` sample id of each pair."""
    image_labels: npt.NDArray[np.bool_]
    """``[n, C]`` what each image shows."""
    text_labels: npt.NDArray[np.bool_]
    """``[n, C]`` what each caption says."""
    concepts: list[str]
    kinds: list[str]
    image_hook: str
    text_hook: str
    pool: str
    """How token rows were pooled (``mean``/``first``/``last``; irrelevant for one row per sample)."""
    n_dropped: int = 0
    """Samples left out: no row in one of the hooks, or no label row."""

    @property
    def n(self) -> int:
        return int(self.image_rows.shape[0])


def _joint_source(store: Any, hook: str) -> tuple[str, int] | None:
    """``(joint hook, modality code)`` serving ``image.<p>`` / ``text.<p>`` from ``joint.<p>``."""
    tower, _, point = hook.partition(".")
    joint = f"joint.{point}"
    if tower in ("image", "text") and joint in store.hooks:
        return joint, 0 if tower == "image" else 1
    return None


def check_hooks(store: Any, image_hook: str, text_hook: str) -> tuple[int, int]:
    """The widths of both hooks (``joint.<point>`` serving ``image/text.<point>``).

    Raises:
        InputError: a hook is not in the store (the message names it and says to cache
            both towers), or the two hooks differ in width (both hooks and widths named).
    """
    widths = []
    for hook in (image_hook, text_hook):
        if hook in store.hooks:
            widths.append(int(store.width(hook)))
            continue
        joint = _joint_source(store, hook)
        if joint is None:
            raise InputError(
                f"hook {hook!r} is not in the store (it holds {store.hooks}); a shared "
                f"dictionary needs rows of both towers: {CACHE_BOTH}"
            )
        widths.append(int(store.width(joint[0])))
    if widths[0] != widths[1]:
        raise InputError(
            f"hooks {image_hook!r} (width {widths[0]}) and {text_hook!r} (width {widths[1]}) "
            "differ in width: one shared dictionary needs two hooks of equal width (e.g. "
            "image.embed and text.embed, both projected into the shared space)"
        )
    return widths[0], widths[1]


def _hook_rows(
    store: Any, hook: str
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64], npt.NDArray[np.int32]]:
    """``(rows, sample ids, positions)`` of a hook (or its share of a joint hook)."""
    joint = None if hook in store.hooks else _joint_source(store, hook)
    name = hook if joint is None else joint[0]
    rows = store.read(name).float().numpy()
    idx = store.index(name)
    keep = np.ones(len(rows), dtype=bool) if joint is None else idx.modality == joint[1]
    return rows[keep], np.asarray(idx.sample)[keep], np.asarray(idx.position)[keep]


def pool_rows(
    rows: npt.NDArray[np.float32],
    sample: npt.NDArray[np.int64],
    position: npt.NDArray[np.int32],
    pool: str,
) -> tuple[Array, npt.NDArray[np.int64]]:
    """One row per sample ``([S, d], sorted sample ids [S])`` from token rows.

    ``mean`` averages a sample's rows; ``first`` / ``last`` take its row of the lowest /
    highest token position (rows without a position, -1, count in row order).

    Raises:
        InputError: ``pool`` is not one of :data:`POOLS`.
    """
    if pool not in POOLS:
        raise InputError(f"pool must be one of {', '.join(POOLS)}, got {pool!r}")
    ids, inverse, counts = np.unique(sample, return_inverse=True, return_counts=True)
    if len(ids) == len(sample):
        order = np.argsort(sample, kind="stable")
        return rows[order].astype(np.float64), ids
    if pool == "mean":
        out = np.zeros((len(ids), rows.shape[1]), dtype=np.float64)
        np.add.at(out, inverse, rows.astype(np.float64))
        return out / counts[:, None], ids
    pos = np.where(position < 0, np.arange(len(position)), position).astype(np.int64)
    key = pos if pool == "first" else -pos
    order = np.lexsort((key, inverse))
    first = np.ones(len(order), dtype=bool)
    first[1:] = inverse[order][1:] != inverse[order][:-1]
    return rows[order[first]].astype(np.float64), ids


def _labels(store: Any, sample: npt.NDArray[np.int64]) -> tuple[Any, npt.NDArray[np.int64]]:
    """The store's labels and, per sample, its label row (-1 when it has none)."""
    labels = store.labels
    if labels is None:
        raise InputError(
            "the store has no concept labels: the shared-dictionary analysis scores features "
            "against them; cache from a source with labels (e.g. synthetic:..., coco:...) "
            "or pass --concepts to vlmfast cache"
        )
    lookup = {int(s): r for r, s in enumerate(np.asarray(labels.sample))}
    rows = np.array([lookup.get(int(s), -1) for s in sample], dtype=np.int64)
    return labels, rows


def store_pairs(
    store: Any,
    image_hook: str = "image.embed",
    text_hook: str = "text.embed",
    *,
    pool: str = "mean",
) -> StorePairs:
    """The matched rows of ``image_hook`` and ``text_hook`` in ``store`` (module docstring).

    Returns:
        The matched rows (a :class:`StorePairs`; in the store's units, as float64).

    Raises:
        InputError: a hook is missing (cache both towers), the widths differ (both named),
            the store has no labels, or fewer than 2 samples have rows in both hooks.
        ShapeError: the matched rows differ in width (a store ``check_hooks`` missed).
    """
    check_hooks(store, image_hook, text_hook)
    img, img_ids = pool_rows(*_hook_rows(store, image_hook), pool)
    txt, txt_ids = pool_rows(*_hook_rows(store, text_hook), pool)
    common, ii, tt = np.intersect1d(img_ids, txt_ids, return_indices=True)
    labels, lab_rows = _labels(store, common)
    ok = lab_rows >= 0
    if ok.sum() < 2:
        raise InputError(
            f"only {int(ok.sum())} samples have rows in both {image_hook!r} and {text_hook!r} "
            f"and a label row; {CACHE_BOTH}"
        )
    cap = labels.caption if labels.caption is not None else labels.for_modality(1)
    n_all = len(np.union1d(img_ids, txt_ids))
    lr = lab_rows[ok]
    out = StorePairs(
        img[ii[ok]],
        txt[tt[ok]],
        common[ok],
        np.asarray(labels.matrix, dtype=bool)[lr],
        np.asarray(cap, dtype=bool)[lr],
        list(labels.names),
        list(labels.kinds),
        image_hook,
        text_hook,
        pool,
        n_all - int(ok.sum()),
    )
    if out.image_rows.shape[1] != out.text_rows.shape[1]:  # pragma: no cover - check_hooks
        raise ShapeError("matched rows differ in width")
    return out


def single_object_mask(pairs: StorePairs) -> npt.NDArray[np.bool_] | None:
    """Pairs whose image shows one object, or None when the labels cannot say.

    One object: exactly one ``object``-kind concept and, where the labels have
    ``relation`` concepts, none of them (two objects always stand in some relation).
    None when the labels have no ``object`` kind.
    """
    kinds = np.asarray(pairs.kinds)
    obj = kinds == "object"
    if not obj.any():
        return None
    one = pairs.image_labels[:, obj].sum(1) == 1
    rel = kinds == "relation"
    if rel.any():
        one &= ~pairs.image_labels[:, rel].any(1)
    return np.asarray(one)
