"""The typed result of ``vf.causal.find_circuit``: the circuit, its faithfulness curve, the null."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmfast.causal.circuits.dot import circuit_to_dot
from vlmfast.causal.circuits.graph import circuit_edges
from vlmfast.causal.circuits.svg import circuit_to_svg
from vlmfast.causal.circuits.types import CircuitEdge, CircuitNode
from vlmfast.causal.core.jsonsafe import json_safe
from vlmfast.errors import InputError


@dataclass
class NullSummary:
    """Faithfulness curves and sparsities of ``size`` random orderings of the same nodes."""

    size: int
    seed: int
    k: list[int]
    """The grid sizes every null ordering was evaluated at (the observed curve's grid)."""
    curves: list[list[float]]
    """``curves[j][i]``: f of random ordering ``j`` at ``k[i]``."""
    sparsity: list[float]
    """Grid sparsity (smallest grid k/N with f >= target at every grid size from it on)."""
    observed_sparsity: float
    """The observed ordering's sparsity on the same grid (what the p-value compares)."""
    pvalue: float | None
    """``(1 + #null sparsity <= observed) / (1 + size)``; None when not requested."""
    mean: list[float]
    low: list[float]
    high: list[float]
    """Pointwise mean and ``level`` central interval of the null curves."""
    sparsity_mean: float
    sparsity_low: float
    sparsity_high: float
    auc_mean: float
    level: float = 0.95

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Circuit:
    """A circuit found by ``find_circuit`` and how faithful it is.

    ``f(C) = (m(C) - m(empty)) / (m(model) - m(empty))`` on the pair's metric, where
    ``m(C)`` runs with every candidate node outside ``C`` ablated (``ablation``), ``m(model)``
    ablates nothing and ``m(empty)`` ablates every candidate (MIB's / feature-circuits'
    faithfulness). ``f(full) = 1`` and ``f(empty) = 0`` hold exactly (the curve is
    normalised by its own end points).
    """

    nodes: list[CircuitNode]
    """The circuit: the first ``size`` nodes of ``order``."""
    order: list[CircuitNode]
    """Every candidate node, best first (the ranking the curve follows)."""
    scores: list[float] | None
    """Ranking score of each node of ``order`` (None for a given order)."""
    k: list[int]
    """Circuit sizes evaluated exactly, ascending: the log-spaced grid plus the refinement
    around the crossing (``on_grid`` says which)."""
    curve: list[float]
    """``f(k)`` at each ``k``."""
    metric: list[float]
    """``m(k)``: the raw metric with the top-k kept."""
    on_grid: list[bool]
    size: int
    """The circuit's size: smallest evaluated k with ``f(k') >= target`` at every evaluated
    ``k' >= k``."""
    n_nodes: int
    target: float
    faithfulness: float
    """``f`` at ``size``."""
    faithfulness_interval: tuple[float, float]
    """Bootstrap (over examples) ``level`` percentile interval of ``faithfulness``."""
    completeness: float
    """``f(complement)``: the model with only the circuit's nodes ablated (near 0 = the
    circuit holds everything the metric needs)."""
    metric_model: float
    metric_empty: float
    metric_circuit: float
    metric_complement: float
    auc: float
    """Area under ``f`` over ``k / N`` (trapezoid over the evaluated sizes; MIB's CPR)."""
    cmd: float
    """Area under ``|1 - f|`` over ``k / N`` (MIB's CMD)."""
    ablation: str
    ranking: str
    null: NullSummary | None = None
    level: float = 0.95
    meta: dict[str, Any] = field(default_factory=dict)
    _edges: list[CircuitEdge] | None = field(default=None, repr=False)

    # ---- views ---------------------------------------------------------------------
    @property
    def components(self) -> list[tuple[str, str, int, int]]:
        """``(tower, kind, layer, index)`` of the circuit's nodes, in ranking order."""
        return [n.as_tuple() for n in self.nodes]

    @property
    def sparsity(self) -> float:
        """``size / n_nodes``."""
        return self.size / self.n_nodes

    @property
    def raw_ratio(self) -> float:
        """``m(C) / m(model)`` (auto-circuit's ``answer_diff_percent``, no empty term)."""
        if self.metric_model == 0:
            return math.nan
        return self.metric_circuit / self.metric_model

    @property
    def pvalue(self) -> float | None:
        """Permutation p-value of the sparsity against the null (None without one)."""
        return None if self.null is None else self.null.pvalue

    # ---- edges and drawings (graph.py, dot.py, svg.py)
    def edges(
        self,
        pair: Any,
        images: Any,
        texts: Any,
        corrupt_images: Any = None,
        corrupt_texts: Any = None,
        **kw: Any,
    ) -> list[CircuitEdge]:
        """Returns the edges between the circuit's nodes and into the logit
        (``circuit_edges``; effects in metric units); kept on the result so ``to_dot`` /
        ``to_svg`` draw them.

        Raises:
            InputError: as :func:`circuit_edges`.
        """
        self._edges = circuit_edges(
            pair, images, texts, corrupt_images, corrupt_texts, nodes=self.nodes, **kw
        )
        return self._edges

    def _need_edges(self, edges: list[CircuitEdge] | None) -> list[CircuitEdge]:
        got = edges if edges is not None else self._edges
        if got is None:
            raise InputError("no edges yet: call circuit.edges(pair, images, texts, ...) first")
        return got

    def to_dot(
        self, edges: list[CircuitEdge] | None = None, labels: dict[str, str] | None = None
    ) -> str:
        """Returns the Graphviz DOT of the circuit (``circuit_to_dot``).

        Raises:
            InputError: no ``edges`` given and :meth:`edges` not called yet.
        """
        out: str = circuit_to_dot(self.nodes, self._need_edges(edges), labels=labels)
        return out

    def to_svg(
        self, edges: list[CircuitEdge] | None = None, labels: dict[str, str] | None = None
    ) -> str:
        """Returns the SVG drawing of the circuit (``circuit_to_svg``; needs no Graphviz).

        Raises:
            InputError: no ``edges`` given and :meth:`edges` not called yet.
        """
        out: str = circuit_to_svg(self.nodes, self._need_edges(edges), labels=labels)
        return out

    # ---- export --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Returns the circuit as a plain dict: nodes, size, faithfulness (a fraction of
        the model's metric), the curve, the null and the edges."""
        return {
            "components": [list(c) for c in self.components],
            "nodes": [n.to_dict() for n in self.nodes],
            "size": self.size,
            "n_nodes": self.n_nodes,
            "sparsity": self.sparsity,
            "target": self.target,
            "faithfulness": self.faithfulness,
            "faithfulness_interval": list(self.faithfulness_interval),
            "level": self.level,
            "completeness": self.completeness,
            "auc": self.auc,
            "cmd": self.cmd,
            "metric_model": self.metric_model,
            "metric_empty": self.metric_empty,
            "metric_circuit": self.metric_circuit,
            "metric_complement": self.metric_complement,
            "raw_ratio": self.raw_ratio,
            "ablation": self.ablation,
            "ranking": self.ranking,
            "curve": {"k": self.k, "f": self.curve, "metric": self.metric, "on_grid": self.on_grid},
            "order": [n.key for n in self.order],
            "scores": self.scores,
            "null": self.null.to_dict() if self.null is not None else None,
            "edges": [e.to_dict() for e in self._edges] if self._edges is not None else None,
            "meta": self.meta,
        }

    def to_json(self, indent: int | None = 2) -> str:
        """Returns ``to_dict`` as JSON (NaN / inf written as null)."""
        return json.dumps(json_safe(self.to_dict()), indent=indent, allow_nan=False)

    def rows(self) -> list[dict[str, Any]]:
        """Returns one long table: ``table="curve"`` rows (one per evaluated k, with the null band
        at grid sizes) and ``table="component"`` rows (one per ranked node)."""
        null_at: dict[int, tuple[float, float, float]] = {}
        if self.null is not None:
            for i, kk in enumerate(self.null.k):
                null_at[kk] = (self.null.mean[i], self.null.low[i], self.null.high[i])
        blank: dict[str, Any] = {
            "table": None, "k": None, "fraction": None, "faithfulness": None, "metric": None,
            "on_grid": None, "null_mean": None, "null_low": None, "null_high": None,
            "rank": None, "key": None, "tower": None, "kind": None, "layer": None,
            "index": None, "score": None, "in_circuit": None,
        }  # fmt: skip
        out: list[dict[str, Any]] = []
        for kk, f, m, g in zip(self.k, self.curve, self.metric, self.on_grid, strict=True):
            band = null_at.get(kk, (None, None, None))
            out.append(
                blank
                | {
                    "table": "curve",
                    "k": kk,
                    "fraction": kk / self.n_nodes,
                    "faithfulness": f,
                    "metric": m,
                    "on_grid": g,
                    "null_mean": band[0],
                    "null_low": band[1],
                    "null_high": band[2],
                }
            )
        for r, node in enumerate(self.order):
            out.append(
                blank
                | {
                    "table": "component",
                    "rank": r,
                    "key": node.key,
                    "tower": node.tower,
                    "kind": node.kind,
                    "layer": node.layer,
                    "index": node.index,
                    "score": self.scores[r] if self.scores is not None else None,
                    "in_circuit": r < self.size,
                }
            )
        return out

    def plot(self, path: str | Path | None = None) -> Any:
        """Returns the faithfulness curve (f vs k/N, log x) as a matplotlib Figure, with the
        null's mean and band, the target and the chosen size; saved as PNG at ``path``
        when given.

        Raises:
            InputError: matplotlib is not installed.
        """
        try:
            # a bare Figure: no pyplot state, no backend switch (notebooks keep inline plots)
            from matplotlib.figure import Figure
        except ImportError as err:  # pragma: no cover - matplotlib is in the dev env
            raise InputError("Circuit.plot needs matplotlib") from err
        n = self.n_nodes
        fig = Figure(figsize=(6.4, 4.0))
        ax = fig.subplots()
        xs = [max(kk, 0.5) / n for kk in self.k]
        if self.null is not None:
            nx = [max(kk, 0.5) / n for kk in self.null.k]
            ax.fill_between(
                nx, self.null.low, self.null.high, color="0.8", label=f"null {self.level:.0%}"
            )
            ax.plot(nx, self.null.mean, color="0.5", lw=1, ls="--", label="null mean")
        ax.plot(xs, self.curve, color="C0", marker=".", lw=1.5, label=f"{self.ranking} order")
        ax.axhline(self.target, color="C3", lw=0.8, ls=":", label=f"target {self.target:g}")
        ax.axvline(self.size / n, color="C2", lw=0.8, label=f"k = {self.size}")
        ax.set_xscale("log")
        ax.set_xlabel(f"fraction of components kept (N = {n}; k = 0 drawn at 0.5 / N)")
        ax.set_ylabel("faithfulness f(k)")
        title = f"circuit: {self.size} components, f = {self.faithfulness:.3f}"
        if self.pvalue is not None:
            title += f", p = {self.pvalue:.3g}"
        ax.set_title(f"{title} ({self.ablation} ablation)", fontsize=9)
        ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        if path is not None:
            fig.savefig(Path(path).with_suffix(".png"), dpi=120)
        return fig
