"""SAE codes that do not fit in memory: spilled to ``.npy`` files and scored in blocks of
features, re-reading the files per block (:func:`vlmfast.stats.score_sparse_chunks`)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from vlmfast.scoring.modality import MODALITY_NAMES
from vlmfast.scoring.pipeline import ScoringConfig, ScoringResult, result_from_scores
from vlmfast.scoring.store_rows import ScoredRows
from vlmfast.stats import score_sparse_chunks


def score_spilled(
    chunks_idx: list[np.ndarray],
    chunks_val: list[np.ndarray],
    rows: ScoredRows,
    n_features: int,
    feature_block: int,
    spill_dir: str | None,
    config: ScoringConfig | None,
    meta: dict[str, Any],
) -> ScoringResult:
    """Scores the codes of ``rows`` per modality; the chunk lists are emptied as written."""
    cfg = config or ScoringConfig()
    meta.update({"n_latents": n_features, "feature_block": feature_block})
    with tempfile.TemporaryDirectory(dir=spill_dir) as tmp:
        idx_path, val_path = Path(tmp) / "indices.npy", Path(tmp) / "values.npy"
        meta["k"] = _spill(chunks_idx, chunks_val, idx_path, val_path)
        idx_r = np.load(idx_path, mmap_mode="r")
        val_r = np.load(val_path, mmap_mode="r")
        scores: dict[str, tuple[npt.NDArray[np.int64], Any]] = {}
        samples_by_modality: dict[str, npt.NDArray[np.int64]] = {}
        for m, name in MODALITY_NAMES.items():
            sel = np.flatnonzero(rows.modality == m).astype(np.int64)
            if len(sel) == 0:
                continue

            def chunks(sel: npt.NDArray[np.int64] = sel) -> Any:
                for lo in range(0, len(sel), 65536):
                    part = sel[lo : lo + 65536]
                    yield np.asarray(idx_r[part]), np.asarray(val_r[part])

            s = score_sparse_chunks(
                chunks, rows.labels[sel], n_features, feature_block=feature_block, top_n=cfg.top_n
            )
            scores[name] = (rows.keep[sel], s)
            samples_by_modality[name] = rows.sample[sel]
    result = result_from_scores(scores, rows.concepts, config=cfg, meta=meta)
    for name, res in result.per_modality.items():
        res.samples = samples_by_modality[name]
    return result


def _spill(
    chunks_idx: list[np.ndarray], chunks_val: list[np.ndarray], idx_path: Path, val_path: Path
) -> int:
    """Writes the code chunks (popped one by one) into two ``.npy`` files; returns k."""
    n = sum(len(c) for c in chunks_idx)
    k = chunks_idx[0].shape[1] if chunks_idx else 0
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
    return int(k)
