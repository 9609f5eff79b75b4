"""Scoring straight from an activation store: read a hook, encode with an SAE, score.

Used by ``vlmfast score``. Works with any object that has the
``vf.store.ActivationStore`` interface: ``n_rows(hook)``, ``read(hook, start,
stop)``, ``index(hook)`` (``sample``, ``position``, ``modality`` arrays) and
``labels`` (``matrix``, ``sample``, ``names``, ``kinds``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from vlmfast.errors import InputError, StoreError
from vlmfast.scoring.concepts import ConceptSet
from vlmfast.scoring.modality import MODALITY_NAMES
from vlmfast.scoring.pipeline import (
    ScoringConfig,
    ScoringResult,
    result_from_scores,
    score_codes,
    score_units,
)
from vlmfast.stats import score_sparse_chunks
from vlmfast.stats._inputs import as_numpy

TOKEN_MODES = ("auto", "pooled", "all", "max", "mean", "patch")
"""How rows become scored samples: ``pooled`` rows (position -1) one per sample; ``max`` /
``mean``: each unit's max / mean over a sample's token rows (position >= 0), one scored
value per sample and modality; ``all``: every row scored on its own, carrying its sample's
labels (a per-token diagnostic, not the paper's per-image AUROC); ``patch``: each image
patch row against what its patch shows (object boxes; ``vlmfast.scoring.patches``; text
rows are not scored); ``auto``: ``pooled`` when the hook has pooled rows, else ``max``."""
AGGREGATED = ("max", "mean")


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
    if tokens in AGGREGATED and not has_tokens:
        raise InputError(
            f"{hook} has no token rows (only pooled rows, position -1); score it with "
            "tokens='pooled'"
        )
    return tokens


def _select_rows(position: npt.NDArray[Any], mode: str) -> npt.NDArray[np.int64]:
    if mode == "pooled":
        return np.flatnonzero(position < 0).astype(np.int64)
    if mode in AGGREGATED:
        return np.flatnonzero(position >= 0).astype(np.int64)
    return np.arange(len(position), dtype=np.int64)


def _row_labels(
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


def _scored_rows(
    store: Any, hook: str, index: Any, mode: str
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], np.ndarray, np.ndarray, ConceptSet]:
    """``(store rows, their samples, modality, labels, concepts)`` scored in ``mode``."""
    if mode == "patch":  # image patch rows against their patch's box labels
        from vlmfast.scoring.patches import patch_rows

        return patch_rows(store, hook, index)
    position = np.asarray(index.position)
    keep = _select_rows(position, mode)
    if mode in AGGREGATED and _image_cls_token(store):
        # an image sample's max/mean is over its patches: the CLS row is no patch
        image_cls = (np.asarray(index.modality)[keep] == 0) & (position[keep] == 0)
        keep = keep[~image_cls]
    sample = np.asarray(index.sample, dtype=np.int64)[keep]
    modality = np.asarray(index.modality, dtype=np.uint8)[keep]
    labels, found, concepts = _row_labels(store, sample, modality)
    return keep[found], sample[found], modality[found], labels, concepts


def score_store(
    store: Any,
    hook: str,
    *,
    sae: Any = None,
    tokens: str = "auto",
    batch_size: int = 8192,
    config: ScoringConfig | None = None,
    device: str = "cpu",
    progress: Callable[[int], None] | None = None,
    feature_block: int | None = None,
    spill_dir: str | None = None,
) -> ScoringResult:
    """Scores ``hook``'s rows of ``store``: SAE features when ``sae`` is given, else the raw units.

    Rows are scored per modality (index ``modality``: 0 image, 1 text), never pooled.
    ``tokens`` (see :data:`TOKEN_MODES`): ``"pooled"`` rows only (position -1);
    ``"max"`` / ``"mean"``: each unit's max / mean over each sample's token rows, one
    value per sample and modality (image samples over their patches: a CLS row is left
    out), streamed over row chunks (exact; Rust); ``"all"``:
    every token row on its own with its sample's labels; ``"auto"``: pooled rows when
    the hook has any, else ``max``. Image rows are scored against what the image shows,
    text rows against what the caption says (``Labels.for_modality``). ``"patch"``: each
    image patch row of an image token hook against what its patch shows (the store's
    object boxes, ``vlmfast.scoring.patches``; CLS and text rows are not scored).
    ``progress(n)`` is called with the number of rows read after each batch.

    ``feature_block`` (SAE only) bounds memory for codes that do not fit: the codes
    are spilled to ``.npy`` files in ``spill_dir`` (a temporary folder by default)
    and scored in blocks of that many features, re-reading the files per block
    (:func:`vlmfast.stats.score_sparse_chunks`; same results).
    """
    if batch_size <= 0:
        raise InputError(f"batch_size must be > 0, got {batch_size}")
    n = int(store.n_rows(hook))
    index = store.index(hook)
    position = np.asarray(index.position)
    mode = resolve_tokens(position, tokens, hook)
    keep, sample, modality, labels, concepts = _scored_rows(store, hook, index, mode)
    if len(keep) == 0:
        raise StoreError(f"no rows of {hook} have concept labels")
    if mode in AGGREGATED:
        return _score_aggregated(
            store,
            hook,
            keep,
            sample,
            modality,
            labels,
            concepts,
            mode=mode,
            tokens=tokens,
            sae=sae,
            batch_size=batch_size,
            config=config,
            device=device,
            progress=progress,
            feature_block=feature_block,
        )
    chunks_idx: list[np.ndarray] = []
    chunks_val: list[np.ndarray] = []
    chunks_dense: list[np.ndarray] = []
    keep_mask = np.zeros(n, dtype=bool)
    keep_mask[keep] = True
    for start in range(0, n, batch_size):
        stop = min(n, start + batch_size)
        sel = np.flatnonzero(keep_mask[start:stop])
        if len(sel):
            x = store.read(hook, start, stop)
            if sae is not None:
                import torch

                with torch.no_grad():
                    xt = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
                    xt = xt[torch.as_tensor(sel)].to(device=device, dtype=torch.float32)
                    values, indices = sae.encode(xt)
                chunks_val.append(as_numpy(values, "values").astype(np.float32))
                chunks_idx.append(as_numpy(indices, "indices").astype(np.int32))
            else:
                arr = as_numpy(x, hook)
                if str(arr.dtype) not in ("float32", "float64", "float16"):
                    arr = arr.astype(np.float32)
                chunks_dense.append(np.asarray(arr[sel], dtype=np.float32))
        if progress is not None:
            progress(stop - start)
    meta: dict[str, Any] = {
        "hook": hook,
        "rows_scored": len(keep),
        "rows_in_hook": n,
        "tokens": tokens,
        "aggregation": mode,
        "labels": _label_basis(store),
        "source": "sae" if sae is not None else "units",
    }
    if mode == "patch":
        meta["labels"] = {
            "image": "patch labels (object boxes: the patch holds a box centre or is >= 1/4 covered)",
            "text": "not scored in patch mode",
        }
    if sae is not None and feature_block is not None:
        return _score_spilled(
            chunks_idx,
            chunks_val,
            labels,
            modality,
            keep,
            sample,
            concepts,
            int(sae.n_latents),
            feature_block,
            spill_dir,
            config,
            meta,
        )
    if sae is not None:
        n_features = int(sae.n_latents)
        meta["n_latents"] = n_features
        meta["k"] = int(getattr(sae, "k", 0) or (chunks_idx[0].shape[1] if chunks_idx else 0))
        result = score_codes(
            np.concatenate(chunks_idx),
            np.concatenate(chunks_val),
            labels,
            n_features,
            concepts=concepts,
            modality=modality,
            config=config,
            meta=meta,
        )
    else:
        result = score_units(
            np.concatenate(chunks_dense),
            labels,
            concepts=concepts,
            modality=modality,
            config=config,
            meta=meta,
        )
    # exemplar rows become store row numbers, then sample ids are one lookup away
    for res in result.per_modality.values():
        res.samples = sample[res.rows]
        res.rows = keep[res.rows]
    return result


def _score_spilled(
    chunks_idx: list[np.ndarray],
    chunks_val: list[np.ndarray],
    labels: np.ndarray,
    modality: np.ndarray,
    keep: npt.NDArray[np.int64],
    sample: npt.NDArray[np.int64],
    concepts: ConceptSet,
    n_features: int,
    feature_block: int,
    spill_dir: str | None,
    config: ScoringConfig | None,
    meta: dict[str, Any],
) -> ScoringResult:
    import tempfile
    from pathlib import Path

    cfg = config or ScoringConfig()
    meta.update({"n_latents": n_features, "feature_block": feature_block})
    with tempfile.TemporaryDirectory(dir=spill_dir) as tmp:
        idx_path, val_path = Path(tmp) / "indices.npy", Path(tmp) / "values.npy"
        n = sum(len(c) for c in chunks_idx)
        k = chunks_idx[0].shape[1] if chunks_idx else 0
        meta["k"] = k
        idx_mm = np.lib.format.open_memmap(idx_path, mode="w+", dtype=np.int32, shape=(n, k))
        val_mm = np.lib.format.open_memmap(val_path, mode="w+", dtype=np.float32, shape=(n, k))
        at = 0
        while chunks_idx:
            ci, cv = chunks_idx.pop(0), chunks_val.pop(0)
            idx_mm[at : at + len(ci)] = ci
            val_mm[at : at + len(ci)] = cv
            at += len(ci)
        idx_mm.flush()
        val_mm.flush()
        del idx_mm, val_mm
        idx_r = np.load(idx_path, mmap_mode="r")
        val_r = np.load(val_path, mmap_mode="r")
        scores: dict[str, tuple[npt.NDArray[np.int64], Any]] = {}
        samples_by_modality: dict[str, npt.NDArray[np.int64]] = {}
        for m, name in MODALITY_NAMES.items():
            rows = np.flatnonzero(modality == m).astype(np.int64)
            if len(rows) == 0:
                continue

            def chunks(rows: npt.NDArray[np.int64] = rows) -> Any:
                for lo in range(0, len(rows), 65536):
                    sel = rows[lo : lo + 65536]
                    yield np.asarray(idx_r[sel]), np.asarray(val_r[sel])

            s = score_sparse_chunks(
                chunks, labels[rows], n_features, feature_block=feature_block, top_n=cfg.top_n
            )
            scores[name] = (keep[rows], s)
            samples_by_modality[name] = sample[rows]
    result = result_from_scores(scores, concepts, config=cfg, meta=meta)
    for name, res in result.per_modality.items():
        res.samples = samples_by_modality[name]
    return result


def _image_cls_token(store: Any) -> bool:
    """Whether image token rows at position 0 are a CLS token (recorded by the cache;
    stores without the record: False, every token row counts)."""
    attrs = getattr(store, "attrs", None) or {}
    return bool(((attrs.get("towers") or {}).get("image") or {}).get("cls_token", False))


def _label_basis(store: Any) -> dict[str, str]:
    """What image and text rows were scored against (recorded in the summary), from the
    store's attributes: the label matrices themselves are read once, by ``_row_labels``."""
    attrs = getattr(store, "attrs", None) or {}
    concepts = attrs.get("concepts") or {}
    if not concepts.get("caption_labels"):
        return {"image": "labels/concepts", "text": "labels/concepts (store has no caption labels)"}
    return {
        "image": f"image labels ({concepts.get('image_basis', 'caption')})",
        "text": "caption labels",
    }


def _sample_runs(sample: npt.NDArray[np.int64], hook: str, modality: str) -> np.ndarray:
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


def _score_aggregated(
    store: Any,
    hook: str,
    keep: npt.NDArray[np.int64],
    sample: npt.NDArray[np.int64],
    modality: npt.NDArray[np.uint8],
    labels: np.ndarray,
    concepts: ConceptSet,
    *,
    mode: str,
    tokens: str,
    sae: Any,
    batch_size: int,
    config: ScoringConfig | None,
    device: str,
    progress: Callable[[int], None] | None,
    feature_block: int | None,
) -> ScoringResult:
    """Per-sample max/mean over token rows, streamed from the store, scored per modality."""
    from vlmfast.stats import score_dense_token_chunks, score_sparse_token_chunks

    cfg = config or ScoringConfig()
    n = int(store.n_rows(hook))
    scores: dict[str, tuple[npt.NDArray[np.int64], Any]] = {}
    n_samples: dict[str, int] = {}
    for m, name in MODALITY_NAMES.items():
        sel = np.flatnonzero(modality == m)
        if len(sel) == 0:
            continue
        rows, ids = keep[sel], sample[sel]
        runs = _sample_runs(ids, hook, name)
        first = np.r_[True, ids[1:] != ids[:-1]]
        sample_labels = labels[sel][first]
        mask = np.zeros(n, dtype=bool)
        mask[rows] = True
        sample_of_row = np.full(n, -1, dtype=np.int64)
        sample_of_row[rows] = ids

        def chunks(mask: np.ndarray = mask, sample_of_row: np.ndarray = sample_of_row) -> Any:
            for start in range(0, n, batch_size):
                stop = min(n, start + batch_size)
                pick = np.flatnonzero(mask[start:stop])
                if len(pick) == 0:
                    continue
                x = store.read(hook, start, stop)
                ids_c = sample_of_row[start:stop][pick]
                if sae is not None:
                    import torch

                    with torch.no_grad():
                        xt = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
                        xt = xt[torch.as_tensor(pick)].to(device=device, dtype=torch.float32)
                        values, indices = sae.encode(xt)
                    yield (
                        ids_c,
                        as_numpy(indices, "indices").astype(np.int32),
                        as_numpy(values, "values").astype(np.float32),
                    )
                else:
                    arr = as_numpy(x, hook)
                    yield ids_c, np.asarray(arr[pick], dtype=np.float32)
                if progress is not None:
                    progress(stop - start)

        if sae is not None:
            s = score_sparse_token_chunks(
                chunks,
                sample_labels,
                int(sae.n_latents),
                mode=mode,
                feature_block=feature_block,
                top_n=cfg.top_n,
            )
        else:
            s = score_dense_token_chunks(chunks, sample_labels, mode=mode, top_n=cfg.top_n)
        scores[name] = (runs, s)
        n_samples[name] = len(runs)
    meta: dict[str, Any] = {
        "hook": hook,
        "rows_scored": len(keep),
        "rows_in_hook": n,
        "samples_scored": n_samples,
        "tokens": tokens,
        "aggregation": mode,
        "labels": _label_basis(store),
        "source": "sae" if sae is not None else "units",
    }
    if sae is not None:
        meta["n_latents"] = int(sae.n_latents)
        meta["k"] = int(getattr(sae, "k", 0))
    result = result_from_scores(scores, concepts, config=cfg, meta=meta)
    # scored entries are samples: exemplar "rows" are sample ids here
    for res in result.per_modality.values():
        res.samples = res.rows
    return result
