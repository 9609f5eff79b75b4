"""What ``concept_intervention`` returns: figures before and after, the null, the verdict."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from vlmfast.causal.core.evalset import METRICS
from vlmfast.causal.core.units import UnitSet


def by_metric(names: Sequence[str], values: npt.NDArray[np.float64]) -> dict[str, float]:
    """``{name: value}`` of a row of figures (one per metric)."""
    return {k: float(v) for k, v in zip(names, values)}


@dataclass
class Effect:
    """Figures before and after the intervention (``METRICS`` keys) and their change."""

    clean: dict[str, float]
    after: dict[str, float]
    delta: dict[str, float]

    @classmethod
    def of(cls, clean: npt.NDArray[np.float64], after: npt.NDArray[np.float64]) -> Effect:
        return cls(
            by_metric(METRICS, clean), by_metric(METRICS, after), by_metric(METRICS, after - clean)
        )


@dataclass
class OthersEffect:
    """The non-target concepts: the mean change and each concept's figures."""

    mean: dict[str, float]
    per_concept: dict[str, Effect]


@dataclass
class NullDistribution:
    """Changes under ``size`` random unit sets (same size, tower and layer mix)."""

    size: int
    seed: int
    alternative: str
    """``decrease``, ``increase`` or ``two-sided``: which direction counts as extreme."""
    target: dict[str, list[float]]
    """Per metric, the target concept's change under each random set."""
    mean: dict[str, float]
    low: dict[str, float]
    high: dict[str, float]
    """``level`` central interval of the null changes."""
    extreme: dict[str, float]
    """The most extreme null change in the ``alternative`` direction."""
    pvalue: dict[str, float] | None
    """``(1 + #null at least as extreme) / (1 + size)``; None when ``pvalues=False``."""
    others_mean: dict[str, float]
    """Mean over null sets of the other concepts' mean change."""
    overall_mean: dict[str, float]
    level: float = 0.95


@dataclass
class InterventionResult:
    """What ``concept_intervention`` measured."""

    concept: str
    mode: str
    ablation: str | None
    alpha: float | None
    units: UnitSet
    n_images: int
    """Eval images showing the target concept."""
    target: Effect
    others: OthersEffect
    overall: Effect
    null: NullDistribution | None
    verdict: dict[str, Any] = field(default_factory=dict)
    """Primary metric, the target / others / null statistics, ratio, p-value, booleans."""

    @property
    def targeted(self) -> bool | None:
        """Target change beats the null (p < p_threshold) and the others' mean; None without a null."""
        v = self.verdict.get("targeted")
        return None if v is None else bool(v)

    def to_dict(self) -> dict[str, Any]:
        """Returns the result as a plain dict (units as :meth:`UnitSet.to_dict`)."""
        out = asdict(self)
        out["units"] = self.units.to_dict()
        return out

    def to_json(self, **kw: Any) -> str:
        """Returns :meth:`to_dict` as a JSON string (``kw`` go to ``json.dumps``)."""
        return json.dumps(self.to_dict(), default=float, **kw)

    def rows(self) -> list[dict[str, Any]]:
        """Returns the long table: one row per (measured concept or overall, metric)."""
        out: list[dict[str, Any]] = []
        for m in METRICS:
            base = {"target": self.concept, "mode": self.mode, "metric": m}
            null = self.null
            out.append(
                {
                    **base,
                    "measured": self.concept,
                    "role": "target",
                    "clean": self.target.clean[m],
                    "delta": self.target.delta[m],
                    "null_mean": null.mean[m] if null else None,
                    "null_low": null.low[m] if null else None,
                    "null_high": null.high[m] if null else None,
                    "pvalue": null.pvalue[m] if null and null.pvalue else None,
                }
            )
            for name, eff in self.others.per_concept.items():
                out.append(
                    {
                        **base,
                        "measured": name,
                        "role": "other",
                        "clean": eff.clean[m],
                        "delta": eff.delta[m],
                    }
                )
            out.append(
                {
                    **base,
                    "measured": "*",
                    "role": "overall",
                    "clean": self.overall.clean[m],
                    "delta": self.overall.delta[m],
                }
            )
        return out
