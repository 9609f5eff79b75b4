"""Scores -> units: reading a saved scoring result and picking the most selective units."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from vlmfast.causal.core.units import UNIT_KINDS, UnitLayout, UnitSet
from vlmfast.errors import InputError, ShapeError


@dataclass
class SavedScores:
    """A scoring result read back from a ``ScoringResult.save`` directory."""

    concepts: tuple[str, ...]
    kinds: tuple[str, ...]
    meta: dict[str, Any]
    tables: dict[str, dict[str, npt.NDArray[Any]]] = field(default_factory=dict)
    """Per modality: ``auroc``, ``mean_pos``, ``mean_neg`` (``[units, concepts]``)."""


def load_scores(path: str | Path) -> SavedScores:
    """Returns the scores in ``DIR/scores.zarr`` (what ``vlmfast score`` /
    ``ScoringResult.save`` writes): AUROC in [0, 1] and mean activations per modality.

    Raises:
        InputError: ``path`` holds no ``scores.zarr``.
    """
    import zarr

    root_path = Path(path) / "scores.zarr"
    if not root_path.exists():
        raise InputError(f"--scores {path}: no scores.zarr inside (a vlmfast score output dir)")
    root: Any = zarr.open_group(str(root_path), mode="r")
    attrs: Any = root.attrs
    meta = dict(attrs.get("meta", {}) or {})
    out = SavedScores(tuple(attrs["concepts"]), tuple(attrs.get("kinds", ())), meta, {})
    for name in ("image", "text", "all"):
        if name in root:
            g: Any = root[name]
            out.tables[name] = {
                key: np.asarray(g[key][...])
                for key in ("auroc", "mean_pos", "mean_neg")
                if key in g
            }
    return out


def _score_view(
    scores: Any, modality: str | None
) -> tuple[str, dict[str, Any], tuple[str, ...], dict[str, Any]]:
    """``(modality, {auroc, mean_pos, mean_neg}, concept names, meta)`` of a result."""
    if isinstance(scores, SavedScores):
        tables = scores.tables
        names = scores.concepts
        meta = scores.meta
    elif hasattr(scores, "per_modality") and hasattr(scores, "concepts"):
        tables = {
            k: {
                "auroc": r.scores.auroc,
                "mean_pos": r.scores.mean_pos,
                "mean_neg": r.scores.mean_neg,
            }
            for k, r in scores.per_modality.items()
        }
        names = tuple(scores.concepts.names)
        meta = dict(scores.meta)
    else:
        raise InputError(
            f"scores must be a ScoringResult or vf.causal.load_scores(DIR), got {type(scores).__name__}"
        )
    if modality is None:
        modality = "image" if "image" in tables else next(iter(tables), None)
    if modality not in tables:
        raise InputError(f"modality {modality!r} is not in the scores; it has {sorted(tables)}")
    return str(modality), tables[modality], names, meta


def top_units(
    scores: Any,
    concept: str,
    n: int = 50,
    *,
    modality: str | None = None,
    hooks: str | Sequence[str] | None = None,
    kinds: Sequence[str] | None = None,
    layout: UnitLayout | None = None,
) -> UnitSet:
    """The ``n`` units most selective for ``concept`` (highest AUROC) in one modality.

    ``scores``: a ``ScoringResult`` or ``load_scores(DIR)``; its columns map to units by
    ``layout`` (default: the one in ``scores.meta``). ``modality``: ``image`` (default when
    present) or ``text``. ``hooks`` (names or globs) and ``kinds`` restrict the candidates.
    Ties in AUROC are broken by the larger difference of means (positives minus negatives),
    then by column; units with no AUROC (a constant unit) are never picked.

    Returns:
        The units, best first, with their AUROCs (in [0, 1]) as ``scores``, as a
            :class:`UnitSet`.

    Raises:
        InputError: an unknown concept, modality or kind, ``n < 1``, or no scored unit
            matches ``hooks`` / ``kinds``.
        ShapeError: ``layout`` does not have one unit per scored column.
    """
    mod, table, names, meta = _score_view(scores, modality)
    if concept not in names:
        raise InputError(f"concept {concept!r} is not in the scoring result; it has {list(names)}")
    if n < 1:
        raise InputError(f"n must be >= 1, got {n}")
    c = names.index(concept)
    auroc = np.asarray(table["auroc"], dtype=np.float64)[:, c]
    lay = layout or UnitLayout.from_meta(meta, auroc.shape[0])
    if lay.n_units != auroc.shape[0]:
        raise ShapeError(f"layout has {lay.n_units} units but scores has {auroc.shape[0]}")
    ok = np.isfinite(auroc) & lay.columns(hooks)
    if kinds is not None:
        bad = sorted(set(kinds) - set(UNIT_KINDS))
        if bad:
            raise InputError(f"kinds {bad} unknown; expected some of {list(UNIT_KINDS)}")
        kind_col = np.concatenate([np.full(s.size, s.kind in kinds) for s in lay.segments])
        ok &= kind_col
    if not ok.any():
        raise InputError(f"no scored units match hooks={hooks!r} kinds={kinds!r} in {mod!r}")
    diff = np.zeros_like(auroc)
    if table.get("mean_pos") is not None and table.get("mean_neg") is not None:
        diff = np.nan_to_num(
            np.asarray(table["mean_pos"], np.float64)[:, c]
            - np.asarray(table["mean_neg"], np.float64)[:, c]
        )
    cols = np.flatnonzero(ok)
    order = np.lexsort((cols, -diff[cols], -auroc[cols]))
    pick = cols[order[:n]]
    units = tuple(lay.unit(int(j)) for j in pick)
    return UnitSet(units, concept, mod, lay.model, tuple(float(auroc[j]) for j in pick))
