"""Concept scoring of a set of units, per modality, with the analysis on top.

:func:`score_codes` (top-k SAE codes) and :func:`score_units` (dense units)
score the image rows and the text rows separately (never pooled) and return a
:class:`ScoringResult`: per-modality :class:`~vlmfast.stats.UnitScores`,
selectivity, counts per concept kind with intervals, polysemanticity and,
when both modalities are present, modality invariance. ``save`` writes the
tables to a zarr group and the summary to JSON.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from vlmfast.errors import InputError, ShapeError
from vlmfast.scoring.concepts import ConceptSet
from vlmfast.scoring.labeling import best_concepts
from vlmfast.scoring.modality import MODALITY_NAMES, invariant_features
from vlmfast.scoring.polysemantic import polysemantic_summary
from vlmfast.scoring.selectivity import (
    Selectivity,
    SelectivityConfig,
    count_interval,
    select,
    wilson_interval,
)
from vlmfast.stats import UnitScores, score_dense, score_sparse
from vlmfast.stats.inputs import as_numpy, check_labels


@dataclass(frozen=True)
class ScoringConfig:
    """How units are scored and judged."""

    selectivity: SelectivityConfig = field(default_factory=SelectivityConfig)
    """Threshold, FDR and confidence level of "selective"."""
    top_n: int = 16
    """Exemplars (top activations) kept per unit."""
    best: int = 3
    """Best concepts kept per unit for the automated labels."""

    @classmethod
    def from_options(
        cls, *, threshold: float = 0.9, alpha: float = 0.05, level: float = 0.95, top_n: int = 16
    ) -> ScoringConfig:
        """Returns the config of ``vlmfast score``'s options and the pipeline's ``[score]`` keys.

        Raises:
            InputError: ``threshold`` is outside [0.5, 1] or ``alpha`` outside (0, 1).
        """
        return cls(
            selectivity=SelectivityConfig(threshold=threshold, alpha=alpha, level=level),
            top_n=top_n,
        )


@dataclass
class ModalityResult:
    """Scores and selectivity of the rows of one modality."""

    modality: str
    rows: npt.NDArray[np.int64]
    """Positions (in the scored arrays) of this modality's rows; exemplar rows index into it."""
    scores: UnitScores
    selectivity: Selectivity
    samples: npt.NDArray[np.int64] | None = None
    """Sample id of each entry of ``rows`` (from a store index), for exemplar sample ids."""


@dataclass
class ScoringResult:
    """Everything :func:`score_codes` / :func:`score_units` computed."""

    concepts: ConceptSet
    config: ScoringConfig
    per_modality: dict[str, ModalityResult]
    invariant: npt.NDArray[np.bool_] | None = None
    """``[units, concepts]`` selective in both modalities (shared-space SAEs), if both present."""
    meta: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """Returns the JSON-ready summary: selective-unit counts and percentages per concept
        kind (with Wilson intervals, percent in [0, 100]), polysemanticity, invariance."""
        lvl = self.config.selectivity.level
        out: dict[str, Any] = {
            "definitions": {
                "selective": (
                    f"AUROC >= {self.config.selectivity.threshold} and one-sided Mann-Whitney "
                    f"p significant after Benjamini-Hochberg at FDR {self.config.selectivity.alpha} "
                    "over all (unit, concept) tests of the modality"
                ),
                "count_interval": f"[units whose {lvl:.0%} DeLong CI lower bound / upper bound clears the threshold]",
                "polysemantic": "selective for >= 2 concepts of different kinds or different groups",
                "invariant": "selective for the same concept on image rows and on text rows",
            },
            "meta": self.meta,
            "modalities": {},
        }
        for name, res in self.per_modality.items():
            sel = res.selectivity
            n_units = res.scores.n_units
            kinds: dict[str, Any] = {}
            for kind in self.concepts.kind_names:
                cols = self.concepts.kind_mask(kind)
                kinds[kind] = {"concepts": int(cols.sum()), **count_interval(sel, cols)}
            any_cols = np.ones(len(self.concepts), dtype=bool)
            out["modalities"][name] = {
                "rows": len(res.rows),
                "units": n_units,
                "tests": int(np.isfinite(sel.pvalues).sum()),
                "selective_pairs": int(sel.selective.sum()),
                "selective_units": count_interval(sel, any_cols),
                "by_kind": kinds,
                "dead_units": int((res.scores.firing == 0).sum()),
                **{
                    key: val
                    for key, val in polysemantic_summary(sel.selective, self.concepts, lvl).items()
                    if key != "selective_units"
                },
            }
        if self.invariant is not None:
            inv_units = np.asarray(self.invariant.any(1), dtype=bool)
            sel_any = np.zeros(inv_units.shape[0], dtype=np.bool_)
            for res in self.per_modality.values():
                sel_any = sel_any | np.asarray(res.selectivity.selective.any(1), dtype=bool)
            k, n = int(inv_units.sum()), int(sel_any.sum())
            lo, hi = wilson_interval(k, n, lvl)
            by_kind = {
                kind: int(self.invariant[:, self.concepts.kind_mask(kind)].any(1).sum())
                for kind in self.concepts.kind_names
            }
            out["invariant"] = {
                "units": k,
                "of_selective_units": n,
                "percent": 100.0 * k / n if n else float("nan"),
                "percent_ci": [100.0 * lo, 100.0 * hi],
                "by_kind": by_kind,
            }
        return out

    def save(self, out_dir: str | Path) -> Path:
        """Writes ``scores.zarr`` (one group per modality) and ``summary.json``.

        Returns:
            The folder written, ``out_dir``.
        """
        import zarr

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        root = zarr.open_group(str(out / "scores.zarr"), mode="w")
        root.attrs["concepts"] = list(self.concepts.names)
        root.attrs["kinds"] = list(self.concepts.kinds)
        root.attrs["config"] = json.loads(json.dumps(asdict(self.config)))
        root.attrs["meta"] = json.loads(json.dumps(self.meta, default=str))
        for name, res in self.per_modality.items():
            s, sel = res.scores, res.selectivity
            best = best_concepts(s, self.config.best, self.config.selectivity.level)
            tables: dict[str, np.ndarray | None] = {
                "auroc": s.auroc,
                "se": s.se,
                "pvalue": sel.pvalues,
                "selective": sel.selective,
                "pos_firing": s.pos_firing,
                "mean_pos": s.mean_pos,
                "mean_neg": s.mean_neg,
                "precision": s.precision,
                "firing": s.firing,
                "n_pos": s.n_pos,
                "top_rows": np.where(s.top_rows >= 0, res.rows[np.maximum(s.top_rows, 0)], -1)
                if len(res.rows)
                else s.top_rows,
                "top_values": s.top_values,
                "top_samples": None
                if res.samples is None
                else np.where(s.top_rows >= 0, res.samples[np.maximum(s.top_rows, 0)], -1),
                "best_concept": best.concept,
                "best_auroc": best.auroc,
            }
            g = root.create_group(name)
            g.attrs["n_rows"] = int(s.n_rows)
            for key, arr in tables.items():
                if arr is None:
                    continue
                arr = np.ascontiguousarray(arr)
                chunks = (min(max(arr.shape[0], 1), 4096), *arr.shape[1:]) if arr.ndim else ()
                g.create_array(key, data=arr, chunks=chunks)
            if self.invariant is not None and "invariant" not in root:
                root.create_array(
                    "invariant",
                    data=self.invariant,
                    chunks=(min(max(self.invariant.shape[0], 1), 4096), self.invariant.shape[1]),
                )
        (out / "summary.json").write_text(json.dumps(self.summary(), indent=2, default=str))
        return out


def _modality_rows(modality: Any, n: int) -> dict[str, npt.NDArray[np.int64]]:
    if modality is None:
        return {"all": np.arange(n, dtype=np.int64)}
    mod = as_numpy(modality, "modality").reshape(-1)
    if len(mod) != n:
        raise ShapeError(f"modality has {len(mod)} rows but the activations have {n}")
    bad = set(np.unique(mod).tolist()) - set(MODALITY_NAMES)
    if bad:
        raise InputError(f"modality values must be 0 (image) or 1 (text); found {sorted(bad)}")
    return {
        MODALITY_NAMES[m]: np.flatnonzero(mod == m).astype(np.int64)
        for m in sorted(MODALITY_NAMES)
        if (mod == m).any()
    }


def result_from_scores(
    scores: dict[str, tuple[npt.NDArray[np.int64], UnitScores]],
    concepts: ConceptSet,
    *,
    config: ScoringConfig | None = None,
    meta: dict[str, Any] | None = None,
) -> ScoringResult:
    """Returns the analysis (a :class:`ScoringResult`) on top of already computed scores:
    ``{modality: (rows, UnitScores)}``.

    Use it with :func:`vlmfast.stats.score_sparse_chunks` for codes that do not fit in memory.

    Raises:
        ShapeError: a modality's scores have a different number of concepts than ``concepts``.
    """
    cfg = config or ScoringConfig()
    per = {
        name: ModalityResult(name, rows, s, select(s, cfg.selectivity))
        for name, (rows, s) in scores.items()
    }
    for _, s in scores.values():
        _concepts_for(concepts, s.n_concepts)
    return _finish(concepts, cfg, per, meta)


def _finish(
    concepts: ConceptSet,
    cfg: ScoringConfig,
    per: dict[str, ModalityResult],
    meta: dict[str, Any] | None,
) -> ScoringResult:
    inv = None
    if "image" in per and "text" in per:
        inv = invariant_features(
            per["image"].selectivity.selective, per["text"].selectivity.selective
        )
    return ScoringResult(concepts, cfg, per, inv, dict(meta or {}))


def _concepts_for(concepts: ConceptSet | None, n_concepts: int) -> ConceptSet:
    if concepts is None:
        return ConceptSet.make([f"concept_{i}" for i in range(n_concepts)])
    if len(concepts) != n_concepts:
        raise ShapeError(
            f"labels has {n_concepts} concepts but the concept set has {len(concepts)}"
        )
    return concepts


def score_codes(
    indices: Any,
    values: Any,
    labels: Any,
    n_features: int,
    *,
    concepts: ConceptSet | None = None,
    modality: Any = None,
    config: ScoringConfig | None = None,
    meta: dict[str, Any] | None = None,
) -> ScoringResult:
    """Scores top-k SAE codes ``(indices[N,k], values[N,k])`` against ``labels[N, C]``.

    ``modality[N]`` (0 image, 1 text) splits the rows; each modality is scored on its own.

    Returns:
        The scores, selectivity and summary per modality, as a :class:`ScoringResult`
            (AUROC in [0, 1]).

    Raises:
        InputError: bad codes or labels, or a ``modality`` value other than 0 or 1.
        ShapeError: ``modality``, ``labels`` or ``concepts`` disagree with the rows.
    """
    cfg = config or ScoringConfig()
    idx, vals = as_numpy(indices, "indices"), as_numpy(values, "values")
    lab = check_labels(labels, idx.shape[0] if idx.ndim else None)
    concepts = _concepts_for(concepts, lab.shape[1])
    per: dict[str, ModalityResult] = {}
    for name, rows in _modality_rows(modality, lab.shape[0]).items():
        take = slice(None) if name == "all" else rows
        s = score_sparse(idx[take], vals[take], lab[take], n_features, top_n=cfg.top_n)
        per[name] = ModalityResult(name, rows, s, select(s, cfg.selectivity))
    return _finish(concepts, cfg, per, meta)


def score_units(
    activations: Any,
    labels: Any,
    *,
    concepts: ConceptSet | None = None,
    modality: Any = None,
    config: ScoringConfig | None = None,
    meta: dict[str, Any] | None = None,
) -> ScoringResult:
    """Scores dense units ``activations[N, U]`` (neurons, head norms) against ``labels[N, C]``.

    Returns:
        The scores, selectivity and summary per modality, as a :class:`ScoringResult`
            (AUROC in [0, 1]), as :func:`score_codes`.

    Raises:
        InputError: bad activations or labels, or a ``modality`` value other than 0 or 1.
        ShapeError: ``modality``, ``labels`` or ``concepts`` disagree with the rows.
    """
    cfg = config or ScoringConfig()
    acts = as_numpy(activations, "activations")
    lab = check_labels(labels, acts.shape[0] if acts.ndim else None)
    concepts = _concepts_for(concepts, lab.shape[1])
    per: dict[str, ModalityResult] = {}
    for name, rows in _modality_rows(modality, lab.shape[0]).items():
        take = slice(None) if name == "all" else rows
        s = score_dense(acts[take], lab[take], top_n=cfg.top_n)
        per[name] = ModalityResult(name, rows, s, select(s, cfg.selectivity))
    return _finish(concepts, cfg, per, meta)


def _percent(entry: dict[str, Any]) -> str:
    """``12.5% [8.1, 18.0]``, or ``n/a`` when the share has no denominator (nothing selective)."""
    if entry["percent"] != entry["percent"]:  # NaN: 0 of 0
        return "n/a: none selective"
    lo, hi = entry["percent_ci"]
    return f"{entry['percent']:.1f}% [{lo:.1f}, {hi:.1f}]"


def format_summary(summary: dict[str, Any]) -> str:
    """Returns the summary as a plain-text table (counts per kind with intervals)."""
    lines = []
    for mod, m in summary["modalities"].items():
        lines.append(
            f"[{mod}] rows={m['rows']} units={m['units']} tests={m['tests']} dead={m['dead_units']}"
        )
        lines.append(f"  {'kind':<12}{'concepts':>9}{'selective units':>17}{'interval':>16}")
        for kind, k in m["by_kind"].items():
            lines.append(
                f"  {kind:<12}{k['concepts']:>9}{k['count']:>17}{'[' + str(k['low']) + ', ' + str(k['high']) + ']':>16}"
            )
        su = m["selective_units"]
        lines.append(
            f"  {'any':<12}{'':>9}{su['count']:>17}{'[' + str(su['low']) + ', ' + str(su['high']) + ']':>16}"
        )
        p = m["polysemantic"]
        lines.append(f"  polysemantic: {p['count']} ({_percent(p)}) of selective units")
    if "invariant" in summary:
        inv = summary["invariant"]
        lines.append(
            f"modality-invariant: {inv['units']} units ({_percent(inv)}) "
            f"of {inv['of_selective_units']} selective units"
        )
    return "\n".join(lines)
