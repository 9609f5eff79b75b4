"""Polysemantic units: selective for two or more unrelated concepts.

A selective unit is *polysemantic* when its selective concepts include two
unrelated ones: of different kinds (an object and a color), or of the same
kind but different relatedness groups (``dog`` and ``car``); see
:class:`~vlmfast.scoring.concepts.ConceptSet`. ``cross_kind`` counts only
the first case. Percentages are over the units selective for at least one
concept, with Wilson intervals.

Only *atomic* concepts count (:func:`atomic_columns`): a bound relation (kind ``bound
relation``, ``red left of blue``) is a compound of other concepts, passed one-vs-rest by
a plain "red" unit, so it neither makes a unit polysemantic nor enters the denominator.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from vlmfast.scoring.concepts import ConceptSet
from vlmfast.scoring.selectivity import wilson_interval


def atomic_columns(concepts: ConceptSet) -> npt.NDArray[np.bool_]:
    """``[C]`` bool: the concepts polysemanticity is judged on (all but bound relations)."""
    return ~concepts.kind_mask("bound relation")


def polysemantic_units(
    selective: npt.NDArray[np.bool_], concepts: ConceptSet
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """Returns ``(polysemantic, cross_kind)``: bool ``[units]`` masks (atomic concepts only)."""
    keep = atomic_columns(concepts)
    if not keep.all():
        groups = [g for g, k in zip(concepts.group_of, keep) if k]
        concepts = ConceptSet.make(
            [n for n, k in zip(concepts.names, keep) if k],
            [n for n, k in zip(concepts.kinds, keep) if k],
            groups if concepts.groups else None,
        )
        selective = np.asarray(selective)[:, keep]
    # float32 matmuls (BLAS); counts stay exact below 2^24 concepts
    sel = selective.astype(np.float32)
    unrelated = concepts.unrelated().astype(np.float32)
    kinds = np.array(concepts.kinds, dtype=object)
    cross = (kinds[:, None] != kinds[None, :]).astype(np.float32)
    # a unit has an unrelated pair iff sel · U · selᵀ > 0 on its row (U has a zero diagonal)
    poly = ((sel @ unrelated) * sel).sum(1) > 0
    cross_kind = ((sel @ cross) * sel).sum(1) > 0
    return poly, cross_kind


def polysemantic_summary(
    selective: npt.NDArray[np.bool_], concepts: ConceptSet, level: float = 0.95
) -> dict[str, Any]:
    """Returns the counts and percentages (in [0, 100], with Wilson intervals) of
    polysemantic units, JSON-ready."""
    poly, cross = polysemantic_units(selective, concepts)
    n_sel = int(np.asarray(selective)[:, atomic_columns(concepts)].any(1).sum())
    out: dict[str, Any] = {"selective_units": n_sel}
    for name, mask in (("polysemantic", poly), ("cross_kind", cross)):
        k = int(mask.sum())
        lo, hi = wilson_interval(k, n_sel, level)
        out[name] = {
            "count": k,
            "percent": 100.0 * k / n_sel if n_sel else float("nan"),
            "percent_ci": [100.0 * lo, 100.0 * hi],
        }
    return out
