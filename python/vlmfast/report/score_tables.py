"""Per-unit score tables (``scores.zarr``, written by ``ScoringResult.save``) and their nulls."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt


@dataclass
class ScoreTable:
    """One modality group of one ``scores.zarr``: what the report's figures and nulls need."""

    path: Path
    modality: str
    hook: str
    source: str
    """``sae`` (SAE features) or ``units`` (neurons, heads...)."""
    concepts: list[str]
    kinds: list[str]
    auroc: npt.NDArray[np.float64]
    """``[units, concepts]``."""
    se: npt.NDArray[np.float64] | None
    n_pos: npt.NDArray[np.int64]
    n_rows: int
    selective: npt.NDArray[np.bool_]
    firing: npt.NDArray[np.float64]
    top_samples: npt.NDArray[np.int64] | None
    top_values: npt.NDArray[np.float64] | None
    threshold: float
    level: float

    @property
    def unit_name(self) -> str:
        return "SAE features" if self.source == "sae" else "units"

    def describe(self) -> str:
        return f"{self.unit_name} of {self.hook}"


def load_tables(path: Path) -> list[ScoreTable]:
    """Every modality group of ``path`` (a ``scores.zarr`` folder)."""
    import zarr

    root: Any = zarr.open_group(str(path), mode="r")
    attrs = dict(root.attrs)
    meta = dict(attrs.get("meta") or {})
    sel_cfg = (attrs.get("config") or {}).get("selectivity") or {}
    out = []
    for mod in ("image", "text", "all"):
        if mod not in root:
            continue
        g = root[mod]

        def arr(key: str, g: Any = g) -> Any:
            return np.asarray(g[key][...]) if key in g else None

        out.append(
            ScoreTable(
                path=path,
                modality=mod,
                hook=str(meta.get("hook", "?")),
                source=str(meta.get("source", "units")),
                concepts=list(attrs["concepts"]),
                kinds=list(attrs.get("kinds") or ["concept"] * len(attrs["concepts"])),
                auroc=np.asarray(arr("auroc"), dtype=np.float64),
                se=None if arr("se") is None else np.asarray(arr("se"), dtype=np.float64),
                n_pos=np.asarray(arr("n_pos"), dtype=np.int64).reshape(-1),
                n_rows=int(dict(g.attrs).get("n_rows", 0)),
                selective=np.asarray(arr("selective"), dtype=bool),
                firing=np.asarray(arr("firing"), dtype=np.float64).reshape(-1),
                top_samples=arr("top_samples"),
                top_values=arr("top_values"),
                threshold=float(sel_cfg.get("threshold", 0.9)),
                level=float(sel_cfg.get("level", 0.95)),
            )
        )
    return out


def null_sd(n_pos: npt.NDArray[np.int64], n_rows: int) -> npt.NDArray[np.float64]:
    """Standard deviation of AUROC under no association: sqrt((P+Q+1) / (12 P Q))."""
    p = n_pos.astype(np.float64)
    q = float(n_rows) - p
    with np.errstate(divide="ignore", invalid="ignore"):
        sd = np.sqrt((p + q + 1.0) / (12.0 * p * q))
    return np.where((p > 0) & (q > 0), sd, np.nan)


def expected_null_count(t: ScoreTable, cols: npt.NDArray[np.bool_]) -> float:
    """Expected units with AUROC >= threshold for some concept in ``cols`` if no unit
    carried any concept (normal approximation of the Mann-Whitney null, per concept's
    P positives and Q negatives; BH would only lower it)."""
    sd = null_sd(t.n_pos, t.n_rows)[cols]
    sd = sd[np.isfinite(sd)]
    if not len(sd):
        return 0.0
    z = (t.threshold - 0.5) / sd
    tail = np.array([0.5 * math.erfc(float(v) / math.sqrt(2.0)) for v in z])
    p_any = 1.0 - float(np.prod(1.0 - tail))
    return float(t.auroc.shape[0] * p_any)


def polysemantic_null(
    t: ScoreTable, reps: int = 100, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """% polysemantic when each concept's selective units are reassigned at random
    (each column of the selective matrix permuted over units; the count per concept
    kept): mean and central ``level`` interval over ``reps`` permutations."""
    from vlmfast.scoring.concepts import ConceptSet
    from vlmfast.scoring.polysemantic import atomic_columns, polysemantic_units

    cs = ConceptSet.make(t.concepts, t.kinds)
    rng = np.random.default_rng(seed)
    sel = t.selective
    atomic = atomic_columns(cs)  # as polysemantic_summary: bound relations left out
    vals = []
    for _ in range(reps):
        perm = rng.permuted(sel, axis=0)  # each concept's column shuffled on its own
        n_sel = int(perm[:, atomic].any(1).sum())
        poly, _ = polysemantic_units(perm, cs)
        vals.append(100.0 * int(poly.sum()) / n_sel if n_sel else float("nan"))
    v = np.asarray(vals, dtype=np.float64)
    v = v[np.isfinite(v)]
    if not len(v):
        return float("nan"), float("nan"), float("nan")
    a = (1.0 - level) / 2.0
    return float(v.mean()), float(np.quantile(v, a)), float(np.quantile(v, 1.0 - a))
