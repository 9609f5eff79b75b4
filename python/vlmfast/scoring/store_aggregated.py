"""Token aggregation from a store: each unit's max / mean over a sample's token rows,
streamed from the store and scored per modality (exact; Rust)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

from vlmfast.scoring.modality import MODALITY_NAMES
from vlmfast.scoring.pipeline import ScoringConfig, ScoringResult, result_from_scores
from vlmfast.scoring.store_read import StoreReader, store_meta
from vlmfast.scoring.store_rows import ScoredRows, sample_runs
from vlmfast.stats import UnitScores, score_dense_token_chunks, score_sparse_token_chunks
from vlmfast.stats.inputs import as_numpy


def score_aggregated(
    reader: StoreReader,
    rows: ScoredRows,
    *,
    mode: str,
    tokens: str,
    config: ScoringConfig | None,
    feature_block: int | None,
) -> ScoringResult:
    """Per-sample max/mean over token rows, streamed from the store, scored per modality."""
    cfg = config or ScoringConfig()
    scores: dict[str, tuple[npt.NDArray[np.int64], Any]] = {}
    n_samples: dict[str, int] = {}
    for m, name in MODALITY_NAMES.items():
        sel = np.flatnonzero(rows.modality == m)
        if len(sel) == 0:
            continue
        runs, s = _score_modality(reader, rows, sel, name, mode, cfg.top_n, feature_block)
        scores[name] = (runs, s)
        n_samples[name] = len(runs)
    meta = store_meta(reader, rows, tokens, mode, samples_scored=n_samples)
    if reader.sae is not None:
        meta["n_latents"] = int(reader.sae.n_latents)
        meta["k"] = int(getattr(reader.sae, "k", 0))
    result = result_from_scores(scores, rows.concepts, config=cfg, meta=meta)
    # scored entries are samples: exemplar "rows" are sample ids here
    for res in result.per_modality.values():
        res.samples = res.rows
    return result


def _score_modality(
    reader: StoreReader,
    rows: ScoredRows,
    sel: np.ndarray,
    name: str,
    mode: str,
    top_n: int,
    feature_block: int | None,
) -> tuple[np.ndarray, UnitScores]:
    """The samples (in row order) of one modality's rows ``sel``, and their scores."""
    ids = rows.sample[sel]
    runs = sample_runs(ids, reader.hook, name)
    first = np.r_[True, ids[1:] != ids[:-1]]
    sample_labels = rows.labels[sel][first]
    chunks = _token_chunks(reader, rows.keep[sel], ids)
    if reader.sae is not None:
        s = score_sparse_token_chunks(
            chunks,
            sample_labels,
            int(reader.sae.n_latents),
            mode=mode,
            feature_block=feature_block,
            top_n=top_n,
        )
    else:
        s = score_dense_token_chunks(chunks, sample_labels, mode=mode, top_n=top_n)
    return runs, s


def _token_chunks(
    reader: StoreReader, rows: npt.NDArray[np.int64], ids: npt.NDArray[np.int64]
) -> Callable[[], Iterator[Any]]:
    """A re-iterable stream of ``(sample ids, codes or units)`` over store rows ``rows``."""
    n, hook = reader.n, reader.hook
    mask = np.zeros(n, dtype=bool)
    mask[rows] = True
    sample_of_row = np.full(n, -1, dtype=np.int64)
    sample_of_row[rows] = ids

    def chunks() -> Iterator[Any]:
        for start in range(0, n, reader.batch_size):
            stop = min(n, start + reader.batch_size)
            pick = np.flatnonzero(mask[start:stop])
            if len(pick) == 0:
                continue
            x = reader.store.read(hook, start, stop)
            ids_c = sample_of_row[start:stop][pick]
            if reader.sae is not None:
                yield (ids_c, *reader.encode(x, pick))
            else:
                arr = as_numpy(x, hook)
                yield ids_c, np.asarray(arr[pick], dtype=np.float32)
            if reader.progress is not None:
                reader.progress(stop - start)

    return chunks
