"""Reading a hook's rows from a store in batches: SAE codes (when an SAE is given) or the
raw units, and the metadata every store-scoring result records."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from vlmfast.scoring.store_rows import ROWS_USED, ScoredRows, label_basis
from vlmfast.stats.inputs import as_numpy


@dataclass(frozen=True)
class StoreReader:
    """One hook of one store, read ``batch_size`` rows at a time (``n`` rows in all)."""

    store: Any
    hook: str
    n: int
    sae: Any
    batch_size: int
    device: str
    progress: Callable[[int], None] | None

    def encode(self, x: Any, pick: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(indices int32, values float32)``: the SAE codes of rows ``pick`` of batch ``x``."""
        import torch

        with torch.no_grad():
            xt = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
            xt = xt[torch.as_tensor(pick)].to(device=self.device, dtype=torch.float32)
            values, indices = self.sae.encode(xt)
        return (
            as_numpy(indices, "indices").astype(np.int32),
            as_numpy(values, "values").astype(np.float32),
        )


def store_meta(
    reader: StoreReader,
    rows: ScoredRows,
    tokens: str,
    mode: str,
    samples_scored: dict[str, int] | None = None,
) -> dict[str, Any]:
    """What a store-scoring result records about its rows (in the summary's key order)."""
    meta: dict[str, Any] = {
        "hook": reader.hook,
        "rows_scored": len(rows.keep),
        "rows_in_hook": reader.n,
    }
    if samples_scored is not None:
        meta["samples_scored"] = samples_scored
    meta.update(
        {
            "tokens": tokens,
            "aggregation": mode,
            "rows": ROWS_USED.get(mode, mode),
            "labels": label_basis(reader.store),
            "source": "sae" if reader.sae is not None else "units",
        }
    )
    return meta
