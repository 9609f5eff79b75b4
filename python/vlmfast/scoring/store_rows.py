"""Which rows of a store's hook are scored, and against which labels: token modes,
the CLS row left out of image aggregates, each row's modality labels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from vlmfast.errors import InputError, StoreError
from vlmfast.scoring.concepts import ConceptSet
from vlmfast.store.schema import (
    ATTR_CONCEPTS,
    ATTR_TOWERS,
    CONCEPT_CAPTION_LABELS,
    CONCEPT_IMAGE_BASIS,
    DEFAULT_IMAGE_BASIS,
    TOWER_CLS_TOKEN,
    TOWER_IMAGE,
)

TOKEN_MODES = ("auto", "pooled", "all", "max", "mean", "patch", "cls")
"""How rows become scored samples: ``pooled`` rows (position -1) one per sample (an
``image.embed`` / ``text.embed`` hook: the embedding); ``max`` / ``mean``: each unit's max
/ mean over a sample's token rows (position >= 0), one scored value per sample and
modality; ``all``: every row scored on its own, carrying its sample's labels (a per-token
diagnostic, not the paper's per-image AUROC); ``patch``: each image patch row against
what its patch shows (object boxes; ``vlmfast.scoring.patches``; text rows are not
scored); ``cls``: each image's CLS row (position 0 of an image token hook whose tower has
a CLS token) against what the image shows, one row per image (text rows are not scored);
``auto``: ``pooled`` when the hook has pooled rows, else ``max``."""
AGGREGATED = ("max", "mean")
CLS_MODE = "cls"
ROWS_USED: dict[str, str] = {
    "pooled": "pooled rows (position -1, one per sample: e.g. the embedding)",
    "max": "each sample's max over its token rows (an image's patch rows, CLS left out)",
    "mean": "each sample's mean over its token rows (an image's patch rows, CLS left out)",
    "all": "every row on its own, with its sample's labels (per-token diagnostic)",
    "patch": "image patch rows against their patch's object boxes (text rows not scored)",
    "cls": "image CLS rows (position 0, one per image; text rows not scored)",
}
"""What each concrete token mode scores (recorded as ``rows`` in a score table's metadata
and printed by ``vlmfast score``)."""


@dataclass(frozen=True)
class ScoredRows:
    """The rows one ``score_store`` call scores (all arrays aligned on those rows)."""

    keep: npt.NDArray[np.int64]
    """Store row numbers."""
    sample: npt.NDArray[np.int64]
    """Sample id of each row."""
    modality: np.ndarray
    """0 image, 1 text."""
    labels: np.ndarray
    """``bool[rows, concepts]``: what the row's image shows / caption says."""
    concepts: ConceptSet


def resolve_tokens(position: npt.NDArray[Any], tokens: str, hook: str) -> str:
    """The concrete mode for ``tokens`` on a hook with these row positions."""
    if tokens not in TOKEN_MODES:
        raise InputError(f"tokens must be one of {TOKEN_MODES}, got {tokens!r}")
    has_pooled = bool((position < 0).any())
    has_tokens = bool((position >= 0).any())
    if tokens == "auto":
        return "pooled" if has_pooled else "max"
    if tokens == "patch":
        from vlmfast.scoring.patches import check_patch_hook

        check_patch_hook(position, hook)
    if tokens == "pooled" and not has_pooled:
        raise InputError(
            f"{hook} has no pooled rows (position -1): it was cached at token positions; "
            "score it with tokens='max' or 'mean' (per sample over its tokens)"
        )
    if tokens in (*AGGREGATED, CLS_MODE) and not has_tokens:
        raise InputError(
            f"{hook} has no token rows (only pooled rows, position -1); score it with "
            "tokens='pooled'"
        )
    return tokens


def cls_rows(store: Any, hook: str, index: Any) -> npt.NDArray[np.int64]:
    """Store rows of ``hook`` that are image CLS rows (image rows at position 0).

    Raises ``InputError`` when the store records no CLS token for the image tower or the
    hook has no image token rows."""
    if not image_cls_token(store):
        raise InputError(
            f"tokens='cls': the store records no CLS token for the image tower of {hook}; "
            "score its patch rows (tokens='max' / 'patch') or its embedding (image.embed, "
            "tokens='pooled')"
        )
    position = np.asarray(index.position)
    keep = np.flatnonzero((np.asarray(index.modality) == 0) & (position == 0)).astype(np.int64)
    if len(keep) == 0:
        raise InputError(
            f"tokens='cls': {hook} has no image rows at position 0 (not an image hook?)"
        )
    return keep


def select_rows(position: npt.NDArray[Any], mode: str) -> npt.NDArray[np.int64]:
    if mode == "pooled":
        return np.flatnonzero(position < 0).astype(np.int64)
    if mode in AGGREGATED:
        return np.flatnonzero(position >= 0).astype(np.int64)
    return np.arange(len(position), dtype=np.int64)


def row_labels(
    store: Any, sample: npt.NDArray[np.int64], modality: npt.NDArray[np.uint8]
) -> tuple[np.ndarray, np.ndarray, ConceptSet]:
    """Each row's labels: image rows get what the image shows, text rows what the caption
    says (``Labels.for_modality``); plus which rows have labels at all, and the concepts."""
    labels = store.labels
    if labels is None:
        raise StoreError("the store has no concept labels (labels/); cache with concepts to score")
    by_modality = (
        labels.for_modality
        if hasattr(labels, "for_modality")
        else lambda _m: np.asarray(labels.matrix, dtype=bool)
    )
    present = [int(m) for m in np.unique(modality)]
    ids = np.asarray(labels.sample, dtype=np.int64)
    order = np.argsort(ids, kind="stable")
    pos = np.searchsorted(ids[order], sample)
    pos = np.minimum(pos, max(len(ids) - 1, 0))
    found = (
        (len(ids) > 0) & (ids[order][pos] == sample) if len(ids) else np.zeros(len(sample), bool)
    )
    rows = order[pos]
    concepts = ConceptSet.make(list(labels.names), list(labels.kinds))
    out = np.zeros((len(sample), len(concepts.names)), dtype=bool)
    for m in present:
        sel = modality == m
        out[sel] = np.asarray(by_modality(m), dtype=bool)[rows[sel]]
    return out[found], found, concepts


def scored_rows(store: Any, hook: str, index: Any, mode: str) -> ScoredRows:
    """The store rows scored in ``mode``, their samples, modality, labels and concepts."""
    if mode == "patch":  # image patch rows against their patch's box labels
        from vlmfast.scoring.patches import patch_rows

        return ScoredRows(*patch_rows(store, hook, index))
    position = np.asarray(index.position)
    keep = cls_rows(store, hook, index) if mode == CLS_MODE else select_rows(position, mode)
    if mode in AGGREGATED and image_cls_token(store):
        # an image sample's max/mean is over its patches: the CLS row is no patch
        image_cls = (np.asarray(index.modality)[keep] == 0) & (position[keep] == 0)
        keep = keep[~image_cls]
    sample = np.asarray(index.sample, dtype=np.int64)[keep]
    modality = np.asarray(index.modality, dtype=np.uint8)[keep]
    labels, found, concepts = row_labels(store, sample, modality)
    return ScoredRows(keep[found], sample[found], modality[found], labels, concepts)


def image_cls_token(store: Any) -> bool:
    """Whether image token rows at position 0 are a CLS token (recorded by the cache;
    stores without the record: False, every token row counts)."""
    attrs = getattr(store, "attrs", None) or {}
    tower = (attrs.get(ATTR_TOWERS) or {}).get(TOWER_IMAGE) or {}
    return bool(tower.get(TOWER_CLS_TOKEN, False))


def label_basis(store: Any) -> dict[str, str]:
    """What image and text rows were scored against (recorded in the summary), from the
    store's attributes: the label matrices themselves are read once, by ``row_labels``."""
    attrs = getattr(store, "attrs", None) or {}
    concepts = attrs.get(ATTR_CONCEPTS) or {}
    if not concepts.get(CONCEPT_CAPTION_LABELS):
        return {"image": "labels/concepts", "text": "labels/concepts (store has no caption labels)"}
    return {
        "image": f"image labels ({concepts.get(CONCEPT_IMAGE_BASIS, DEFAULT_IMAGE_BASIS)})",
        "text": "caption labels",
    }


def sample_runs(sample: npt.NDArray[np.int64], hook: str, modality: str) -> np.ndarray:
    """The distinct samples of contiguous token rows, in order; an error if a sample's
    rows are split by another sample's."""
    if len(sample) == 0:
        return sample
    starts = np.r_[True, sample[1:] != sample[:-1]]
    runs = sample[starts]
    if len(np.unique(runs)) != len(runs):
        uniq, counts = np.unique(runs, return_counts=True)
        bad = int(uniq[np.argmax(counts > 1)])
        raise InputError(
            f"{hook} ({modality} rows): the token rows of sample {bad} are not contiguous; "
            "token aggregation needs each sample's rows together (re-cache, or copy the hook "
            "sorted by sample)"
        )
    return runs
