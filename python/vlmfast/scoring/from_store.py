"""Scoring straight from an activation store: read a hook, encode with an SAE, score.

Used by ``vlmfast score``. Works with any object that has the
``vf.store.ActivationStore`` interface: ``n_rows(hook)``, ``read(hook, start,
stop)``, ``index(hook)`` (``sample``, ``position``, ``modality`` arrays) and
``labels`` (``matrix``, ``sample``, ``names``, ``kinds``).

The steps live beside it: ``store_rows`` (which rows, against which labels),
``store_read`` (batched reads and SAE encoding), ``store_aggregated`` (per-sample
max/mean over token rows) and ``store_spill`` (codes spilled to disk, scored in blocks).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from vlmfast.errors import InputError, StoreError
from vlmfast.scoring.pipeline import ScoringConfig, ScoringResult, score_codes, score_units
from vlmfast.scoring.store_aggregated import score_aggregated
from vlmfast.scoring.store_read import StoreReader, store_meta
from vlmfast.scoring.store_rows import (
    AGGREGATED,
    TOKEN_MODES,
    ScoredRows,
    resolve_tokens,
    scored_rows,
)
from vlmfast.scoring.store_spill import score_spilled
from vlmfast.stats.inputs import as_numpy

_PATCH_LABELS = {
    "image": "patch labels (object boxes: the patch holds a box centre or is >= 1/4 covered)",
    "text": "not scored in patch mode",
}


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

    Returns:
        The scoring result (:class:`ScoringResult`) per modality: AUROC in [0, 1]
            with intervals, selective units and the summary counts.

    Raises:
        InputError: ``batch_size`` is not positive (or ``tokens`` is unknown).
        StoreError: no row of ``hook`` has concept labels.
    """
    if batch_size <= 0:
        raise InputError(f"batch_size must be > 0, got {batch_size}")
    reader = StoreReader(store, hook, int(store.n_rows(hook)), sae, batch_size, device, progress)
    index = store.index(hook)
    mode = resolve_tokens(np.asarray(index.position), tokens, hook)
    rows = scored_rows(store, hook, index, mode)
    if len(rows.keep) == 0:
        raise StoreError(f"no rows of {hook} have concept labels")
    if mode in AGGREGATED:
        return score_aggregated(
            reader, rows, mode=mode, tokens=tokens, config=config, feature_block=feature_block
        )
    chunks_idx, chunks_val, chunks_dense = _read_rows(reader, rows.keep)
    meta = store_meta(reader, rows, tokens, mode)
    if mode == "patch":
        meta["labels"] = dict(_PATCH_LABELS)
    if sae is not None and feature_block is not None:
        n_latents = int(sae.n_latents)
        return score_spilled(
            chunks_idx, chunks_val, rows, n_latents, feature_block, spill_dir, config, meta
        )
    if sae is not None:
        n_features = int(sae.n_latents)
        meta["n_latents"] = n_features
        meta["k"] = int(getattr(sae, "k", 0) or (chunks_idx[0].shape[1] if chunks_idx else 0))
        result = score_codes(
            np.concatenate(chunks_idx),
            np.concatenate(chunks_val),
            rows.labels,
            n_features,
            concepts=rows.concepts,
            modality=rows.modality,
            config=config,
            meta=meta,
        )
    else:
        result = score_units(
            np.concatenate(chunks_dense),
            rows.labels,
            concepts=rows.concepts,
            modality=rows.modality,
            config=config,
            meta=meta,
        )
    # exemplar rows become store row numbers, then sample ids are one lookup away
    for res in result.per_modality.values():
        res.samples = rows.sample[res.rows]
        res.rows = rows.keep[res.rows]
    return result


def _read_rows(
    reader: StoreReader, keep: np.ndarray
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """``(code indices, code values, dense units)`` chunks of store rows ``keep``, in order
    (the code lists when an SAE encodes, else the dense one)."""
    chunks_idx: list[np.ndarray] = []
    chunks_val: list[np.ndarray] = []
    chunks_dense: list[np.ndarray] = []
    n, hook = reader.n, reader.hook
    keep_mask = np.zeros(n, dtype=bool)
    keep_mask[keep] = True
    for start in range(0, n, reader.batch_size):
        stop = min(n, start + reader.batch_size)
        sel = np.flatnonzero(keep_mask[start:stop])
        if len(sel):
            x = reader.store.read(hook, start, stop)
            if reader.sae is not None:
                indices, values = reader.encode(x, sel)
                chunks_val.append(values)
                chunks_idx.append(indices)
            else:
                arr = as_numpy(x, hook)
                if str(arr.dtype) not in ("float32", "float64", "float16"):
                    arr = arr.astype(np.float32)
                chunks_dense.append(np.asarray(arr[sel], dtype=np.float32))
        if reader.progress is not None:
            reader.progress(stop - start)
    return chunks_idx, chunks_val, chunks_dense


__all__ = ["AGGREGATED", "TOKEN_MODES", "ScoredRows", "resolve_tokens", "score_store"]
