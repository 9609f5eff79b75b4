"""Steering sweeps: every concept's units at every strength, in shared batched forwards."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from vlmfast.causal.core.evalset import METRICS, as_eval_set
from vlmfast.causal.core.limits import INTERVENTION_MAX_ROWS
from vlmfast.causal.core.units import UnitSet
from vlmfast.causal.interventions.edits import check_units
from vlmfast.causal.interventions.variants import (
    check_common,
    prepare_eval,
    run_variants,
    serial_name,
)
from vlmfast.errors import InputError
from vlmfast.models.interventions import Selector


@dataclass
class SteeringSweep:
    """Steering each concept's units at each strength: ``delta[target, alpha, concept, metric]``."""

    targets: tuple[str, ...]
    alphas: tuple[float, ...]
    concepts: tuple[str, ...]
    clean: npt.NDArray[np.float64]
    """``[concept, metric]`` unsteered figures."""
    delta: npt.NDArray[np.float64]
    """``[target, alpha, concept, metric]`` change of each concept's figures."""
    overall_delta: npt.NDArray[np.float64]
    """``[target, alpha, metric]``."""

    def curve(
        self, target: str, metric: str = "margin", measured: str | None = None
    ) -> list[float]:
        """Returns the change of ``measured`` (default the target itself) along the alphas,
        in ``metric``'s units (logits for ``margin``)."""
        t = self.targets.index(target)
        c = self.concepts.index(measured or target)
        return self.delta[t, :, c, METRICS.index(metric)].tolist()

    def to_dict(self) -> dict[str, Any]:
        """Returns the sweep as a plain dict of lists."""
        return {
            "targets": list(self.targets),
            "alphas": list(self.alphas),
            "concepts": list(self.concepts),
            "metrics": list(METRICS),
            "clean": self.clean.tolist(),
            "delta": self.delta.tolist(),
            "overall_delta": self.overall_delta.tolist(),
        }

    def to_json(self, **kw: Any) -> str:
        """Returns :meth:`to_dict` as a JSON string (``kw`` go to ``json.dumps``)."""
        return json.dumps(self.to_dict(), **kw)


def steering_sweep(
    pair: Any,
    units: Mapping[str, UnitSet] | Sequence[UnitSet],
    alphas: Sequence[float],
    *,
    eval_data: Any = "synthetic:test:256",
    concepts: Sequence[str] | None = None,
    positions: Selector = None,
    saes: Mapping[str, Any] | None = None,
    max_rows: int = INTERVENTION_MAX_ROWS,
    method: str = "batched",
) -> SteeringSweep:
    """Steers every unit set at every alpha; all (set, alpha) variants share batched forwards.

    ``units``: ``{concept: UnitSet}`` or unit sets carrying their concept (``top_units``).

    Returns:
        The change of every concept's figures per (target, alpha), ``delta[target, alpha,
            concept, metric]`` (``METRICS`` units), as a :class:`SteeringSweep`.

    Raises:
        InputError: a unit set without a concept, empty ``units`` or ``alphas``, or a bad
            option or unit.
    """
    saes = dict(saes or {})
    method = serial_name(method)
    check_common("steer", "mean", 0.0, 0, pvalues=False, method=method, max_rows=max_rows)
    sets = dict(units) if isinstance(units, Mapping) else {}
    if not isinstance(units, Mapping):
        for us in units:
            if us.concept is None:
                raise InputError("units: a unit set without a concept; pass {concept: UnitSet}")
            sets[us.concept] = us
    if not sets:
        raise InputError("units is empty")
    if len(alphas) == 0:
        raise InputError("alphas is empty")
    for us in sets.values():
        check_units(pair, us, saes)
    ev = as_eval_set(eval_data, pair)
    names = list(concepts) if concepts is not None else list(ev.concepts)
    ev = ev.select(names)
    variants: list[tuple[UnitSet | None, float]] = [(None, 0.0)]
    for us in sets.values():
        variants.extend((us, float(a)) for a in alphas)
    prep = prepare_eval(pair, ev, list(sets.values()), saes, "steer", "mean")
    table = run_variants(
        pair,
        prep,
        variants,
        mode="steer",
        ablation="mean",
        saes=saes,
        positions=positions,
        max_rows=max_rows,
        method=method,
    )
    clean = table.per_concept[0]
    t, a = len(sets), len(alphas)
    delta = (table.per_concept[1:] - clean[None]).reshape(t, a, len(names), len(METRICS))
    ov = (table.overall[1:] - table.overall[0][None]).reshape(t, a, len(METRICS))
    return SteeringSweep(
        tuple(sets), tuple(float(x) for x in alphas), tuple(names), clean, delta, ov
    )
