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

TOKEN_MODES = ("auto", "pooled", "all")


def _select_rows(position: npt.NDArray[Any], tokens: str) -> npt.NDArray[np.int64]:
    if tokens not in TOKEN_MODES:
        raise InputError(f"tokens must be one of {TOKEN_MODES}, got {tokens!r}")
    pooled = np.flatnonzero(position < 0)
    if tokens == "pooled":
        if len(pooled) == 0:
            raise InputError("the hook has no pooled rows (position -1); use tokens='all'")
        return pooled.astype(np.int64)
    if tokens == "auto" and len(pooled):
        return pooled.astype(np.int64)
    return np.arange(len(position), dtype=np.int64)


def _row_labels(
    store: Any, sample: npt.NDArray[np.int64]
) -> tuple[np.ndarray, np.ndarray, ConceptSet]:
    labels = store.labels
    if labels is None:
        raise StoreError("the store has no concept labels (labels/); cache with concepts to score")
    matrix = np.asarray(labels.matrix, dtype=bool)
    ids = np.asarray(labels.sample, dtype=np.int64)
    order = np.argsort(ids, kind="stable")
    pos = np.searchsorted(ids[order], sample)
    pos = np.minimum(pos, max(len(ids) - 1, 0))
    found = (
        (len(ids) > 0) & (ids[order][pos] == sample) if len(ids) else np.zeros(len(sample), bool)
    )
    rows = order[pos]
    concepts = ConceptSet.make(list(labels.names), list(labels.kinds))
    return matrix[rows[found]], found, concepts


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
    ``tokens``: ``"pooled"`` rows only (position -1), ``"all"`` rows (every token row
    carries its sample's labels), or ``"auto"`` (pooled rows when the hook has any).
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
    keep = _select_rows(position, tokens)
    sample = np.asarray(index.sample, dtype=np.int64)[keep]
    modality = np.asarray(index.modality, dtype=np.uint8)[keep]
    labels, found, concepts = _row_labels(store, sample)
    keep, modality, sample = keep[found], modality[found], sample[found]
    if len(keep) == 0:
        raise StoreError(f"no rows of {hook} have concept labels")
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
        "source": "sae" if sae is not None else "units",
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
