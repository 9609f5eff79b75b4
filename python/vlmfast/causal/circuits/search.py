"""Circuit discovery: the smallest set of components that keeps the pair's score.

    c = vf.causal.find_circuit(pair, images=px, texts=tok, corrupt_images=px_c,
                               components=("heads", "neurons"), towers=("image", "text"),
                               ranking="atp", ablation="mean", target=0.8, null=100, seed=0)
    # the same: find_circuit(pair, px, tok, px_c, config=CircuitConfig(target=0.8, ...))
    c.components    # [(tower, kind, layer, index), ...] in ranking order
    c.sparsity, c.faithfulness, c.faithfulness_interval, c.pvalue

**Faithfulness** (MIB, feature-circuits): ``f(C) = (m(C) - m(empty)) / (m(model) - m(empty))``
on the pair's metric (default ``"score"``: mean matched ``scale*cos + bias``), where
``m(C)`` runs the clean inputs with every candidate component *outside* ``C`` ablated.
Components are ranked, and ``f(k)`` (the top ``k`` kept) is evaluated exactly at a
log-spaced grid of sizes plus a refinement around the crossing; the circuit is the
smallest evaluated ``k`` with ``f(k') >= target`` at *every* evaluated ``k' >= k``
(``sparsity = k / N``). A faithfulness denominator ``|m(model) - m(empty)|`` below ``tol``
is an error naming both values.

**Ablation** (what a component outside the circuit gets; stored on the result):

* ``"mean"``: its mean activation over the **clean batch** at each position (or over
  ``reference=`` inputs: ``{"images": px_ref, "texts": tok_ref}``);
* ``"resample"``: its activation from the **corrupt inputs** of the same row (row ``i``
  of the corrupt batch); for a tower without corrupt inputs, from the clean batch
  permuted by one row (row ``i`` takes row ``i - 1``; ``meta["resample_source"]`` says
  which each tower used);
* ``"zero"``: zero.

**Ranking**: ``"atp"`` = ``|AtP|`` from ``vf.causal.attribute`` (denoising; magnitudes,
because an ablated component moves the metric whichever the sign of its effect: MIB #19
shows that signed ranking changes the curve), ``"atp*"`` = AtP*'s GradDrop magnitudes,
``"exact"`` = ``|m(model with only that component ablated) - m(model)|`` under this
ablation, one batched patch per component (``patch_sweep``; needs no corruption), or a
given order (nodes or ``(tower, kind, layer, index)`` tuples: those first, the rest after
in their default order). Ties keep the default node order.

**Batching**: all sizes of a chunk are stacked on the batch, the towers run once per
distinct kept set of their own nodes and variants share every block below their first
difference (``engine.py``); ``method="serial"`` runs one full forward per size (the
reference). Causal text towers with EOT pooling run on tokens cut after the last EOT
(later positions cannot reach it; exact). The null (``null`` random orderings of the same
nodes, see ``null.py``) is batched the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from vlmfast.causal.circuits.config import CircuitConfig, check_config, corrupt_sides
from vlmfast.causal.circuits.engine import CircuitEvaluator
from vlmfast.causal.circuits.families import HeadFamily, NeuronFamily
from vlmfast.causal.circuits.features import feature_families
from vlmfast.causal.circuits.inputs import ablation_detail, circuit_inputs, resample_inputs
from vlmfast.causal.circuits.null import (
    area,
    bootstrap,
    keep_masks,
    log_grid,
    run_null,
    sparsity_index,
    thin_grid,
)
from vlmfast.causal.circuits.ranking import rank_nodes
from vlmfast.causal.circuits.result import Circuit, NullSummary
from vlmfast.causal.core.conventions import TOWERS
from vlmfast.causal.core.metrics import metric_space, resolve_metric
from vlmfast.errors import InputError

__all__ = ["CircuitConfig", "find_circuit"]

REFINE_POINTS = 16


def find_circuit(
    pair: Any,
    images: Any,
    texts: Any,
    corrupt_images: Any = None,
    corrupt_texts: Any = None,
    *,
    config: CircuitConfig | None = None,
    **options: Any,
) -> Circuit:
    """Ranks components, evaluates the faithfulness curve and picks the circuit.

    Args:
        pair: a HookedPair in eval mode.
        images: the clean images (pixels or PIL images), image ``i`` paired with
            caption ``i``.
        texts: the clean captions (token ids or strings), paired with ``images``.
        corrupt_images: corrupted images (same shape): with ``corrupt_texts``, the
            ranking's counterfactual (atp / atp*) and the ``"resample"`` ablation's source.
        corrupt_texts: corrupted captions (same shape), as ``corrupt_images``.
        config: a :class:`CircuitConfig` (every option, documented per field).
        **options: the same options as keywords (``components=``, ``ranking=``,
            ``ablation=``, ``target=``, ``null=``, ``seed=``, ...); they replace
            ``config``'s fields.

    Returns:
        The circuit: its nodes in ranking order, the faithfulness curve (f, a fraction
            of the model's metric, against size in nodes) with its bootstrap interval and
            the random-ordering null when ``null > 0``, as a :class:`Circuit`.

    Raises:
        InputError: a bad option, inputs that do not pair up, or no candidate components.
        TypeError: an unknown option.
    """
    cfg = CircuitConfig.build(config, options)
    kinds, tower_list = check_config(pair, cfg)
    metric_fn = resolve_metric(cfg.metric)
    clean, corrupt, ref = circuit_inputs(
        pair, images, texts, corrupt_images, corrupt_texts, cfg.reference
    )
    corrupt = corrupt_sides(corrupt, cfg.corrupt)
    resample, resample_source = resample_inputs(clean, corrupt, cfg.ablation)
    fams = _families(pair, kinds, tower_list, cfg.saes, clean, corrupt, cfg.metric, cfg.max_rows)
    fams += list(cfg.families)
    bar = tqdm(total=4 + int(cfg.null > 0), desc="circuit", unit="stage", disable=not cfg.progress)
    bar.set_postfix_str("clean runs")
    evaluator = CircuitEvaluator(
        pair, clean, fams, metric_fn, metric_space(metric_fn), ablation=cfg.ablation,
        reference=ref, resample=resample, max_rows=cfg.max_rows,
    )  # fmt: skip
    if not evaluator.nodes:
        raise InputError("no candidate components (components= and families= are empty)")
    bar.update()
    ranking = cfg.ranking
    bar.set_postfix_str(f"ranking ({ranking if isinstance(ranking, str) else 'given'})")
    order, scores = rank_nodes(
        pair, evaluator, ranking, clean, corrupt, kinds, tower_list, cfg.metric, cfg.max_rows
    )
    bar.update()
    curve = _Curve(evaluator, order, cfg)
    bar.set_postfix_str("curve")
    curve.evaluate_grid()
    bar.update()
    bar.set_postfix_str("circuit, complement")
    m_complement, interval = curve.circuit_and_complement(metric_fn)
    bar.update()
    null_summary = None
    if cfg.null:
        bar.set_postfix_str(f"null ({cfg.null} orderings)")
        null_summary = curve.null()
        bar.update()
    bar.close()
    meta = {
        "metric": cfg.metric if isinstance(cfg.metric, str) else repr(metric_fn),
        "model": getattr(pair, "spec", "") or pair.config.name,
        "n_pairs": int(clean["image"].shape[0]),
        "components": kinds,
        "towers": tower_list,
        "families": [f"{f.tower}/{f.kind}" for f in fams],
        "ablation_detail": ablation_detail(cfg.ablation, ref is not None),
        "resample_source": resample_source if cfg.ablation == "resample" else None,
        "grid_size": curve.grid_size,
        "null_grid": len(curve.ks_null),
        "null_grid_size": curve.null_size,
        "text_tokens": int(clean["text"].shape[1]),
        "method": cfg.method,
        "n_boot": cfg.n_boot,
        "seed": cfg.seed,
        "corrupted": [t for t in TOWERS if corrupt[t] is not None],
        "corrupt": cfg.corrupt,
    }
    out = curve.result(scores, m_complement, interval, null_summary, meta)
    out.meta["per_tower"] = _per_tower(out, tower_list)
    return out


def _per_tower(circuit: Circuit, towers: list[str]) -> dict[str, dict[str, int]]:
    """How many of the circuit's nodes and of the candidates each tower holds."""
    return {
        t: {
            "circuit": sum(n.tower == t for n in circuit.nodes),
            "candidates": sum(n.tower == t for n in circuit.order),
        }
        for t in towers
    }


@dataclass
class _Curve:
    """The faithfulness curve of one ranking: grid, refinement, circuit, null."""

    evaluator: CircuitEvaluator
    order: Tensor
    cfg: CircuitConfig

    def __post_init__(self) -> None:
        self.n_nodes = len(self.evaluator.nodes)
        self.m_by_k: dict[int, float] = {}
        self.sim_by_k: dict[int, Tensor] = {}
        self.ks: list[int] = []
        self.ks_null: list[int] = []
        self.grid_size = self.size = self.null_size = 0
        self.m_empty = self.m_model = 0.0

    def _evaluate(self, keep: Tensor) -> Tensor:
        return self.evaluator.evaluate(keep, self.cfg.method).metric

    def f_of(self, m: float) -> float:
        return (m - self.m_empty) / (self.m_model - self.m_empty)

    def evaluate_grid(self) -> None:
        """The log-spaced grid, then sizes between the crossing and the size below it."""
        n_nodes, cfg = self.n_nodes, self.cfg
        self.ks = ks = log_grid(n_nodes, cfg.grid)
        ev = self.evaluator.evaluate(keep_masks(self.order, ks, n_nodes), cfg.method)
        self.m_by_k = dict(zip(ks, ev.metric.tolist(), strict=True))
        self.sim_by_k = {0: ev.sim[0], n_nodes: ev.sim[-1]}
        self.m_empty, self.m_model = self.m_by_k[0], self.m_by_k[n_nodes]
        denom = self.m_model - self.m_empty
        if not abs(denom) > cfg.tol:
            raise InputError(
                f"faithfulness is undefined: m(model) {self.m_model:.6g} and m(empty) "
                f"{self.m_empty:.6g} differ by {abs(denom):.3g} <= tol {cfg.tol:g} (ablating "
                "every candidate barely moves the metric); use other components, another "
                "ablation or another metric"
            )
        grid_f = [self.f_of(self.m_by_k[k]) for k in ks]
        self.grid_size = ks[sparsity_index(grid_f, cfg.target)]
        while True:
            done = sorted(self.m_by_k)
            fs = [self.f_of(self.m_by_k[k]) for k in done]
            i = sparsity_index(fs, cfg.target)
            hi, lo = done[i], done[i - 1] if i > 0 else done[i]
            if hi - lo <= 1:
                break
            step = (hi - lo) / (REFINE_POINTS + 1)
            inner = sorted({round(lo + step * (j + 1)) for j in range(REFINE_POINTS)} - {lo, hi})
            inner = [k for k in inner if lo < k < hi] or list(range(lo + 1, hi))
            got = self._evaluate(keep_masks(self.order, inner, n_nodes))
            self.m_by_k.update(zip(inner, got.tolist(), strict=True))
        self.size = done[i]
        self.ks_null = ks if cfg.null_grid is None else thin_grid(ks, cfg.null_grid)
        f_null = [self.f_of(self.m_by_k[k]) for k in self.ks_null]
        self.null_size = self.ks_null[sparsity_index(f_null, cfg.target)]

    def circuit_and_complement(self, metric_fn: Any) -> tuple[float, tuple[float, float]]:
        """``m(complement)`` and the bootstrap interval of f at the circuit's size."""
        keep_c = keep_masks(self.order, [self.size], self.n_nodes)
        ev_c = self.evaluator.evaluate(torch.cat([keep_c, ~keep_c]), self.cfg.method)
        self.sim_by_k[self.size] = ev_c.sim[0]
        cfg, sims = self.cfg, self.sim_by_k
        interval = bootstrap(
            metric_fn, sims[self.size], sims[0], sims[self.n_nodes], cfg.n_boot, cfg.seed,
            cfg.level,
        )  # fmt: skip
        return float(ev_c.metric[1]), interval

    def null(self) -> NullSummary:
        """``cfg.null`` random orderings of the same nodes on the (thinned) grid."""
        cfg = self.cfg
        return run_null(
            self._evaluate, self.n_nodes, self.ks_null, size=cfg.null, seed=cfg.seed,
            target=cfg.target, m_empty=self.m_empty, m_model=self.m_model,
            observed_sparsity=self.null_size / self.n_nodes, pvalue=cfg.pvalue, level=cfg.level,
        )  # fmt: skip

    def result(
        self,
        scores: Tensor | None,
        m_complement: float,
        interval: tuple[float, float],
        null_summary: NullSummary | None,
        meta: dict[str, Any],
    ) -> Circuit:
        nodes, order, cfg = self.evaluator.nodes, self.order, self.cfg
        done = sorted(self.m_by_k)
        curve = [self.f_of(self.m_by_k[k]) for k in done]
        on_grid = set(self.ks)
        return Circuit(
            nodes=[nodes[int(j)] for j in order[: self.size]],
            order=[nodes[int(j)] for j in order],
            scores=None if scores is None else [float(scores[int(j)]) for j in order],
            k=done,
            curve=curve,
            metric=[self.m_by_k[k] for k in done],
            on_grid=[k in on_grid for k in done],
            size=self.size,
            n_nodes=self.n_nodes,
            target=float(cfg.target),
            faithfulness=self.f_of(self.m_by_k[self.size]),
            faithfulness_interval=interval,
            completeness=self.f_of(m_complement),
            metric_model=self.m_model,
            metric_empty=self.m_empty,
            metric_circuit=self.m_by_k[self.size],
            metric_complement=m_complement,
            auc=area(done, curve, self.n_nodes),
            cmd=area(done, [abs(1.0 - f) for f in curve], self.n_nodes),
            ablation=cfg.ablation,
            ranking=cfg.ranking if isinstance(cfg.ranking, str) else "given",
            null=null_summary,
            level=cfg.level,
            meta=meta,
        )


def _families(
    pair: Any,
    kinds: list[str],
    towers: list[str],
    saes: dict[str, Any] | None,
    clean: dict[str, Tensor],
    corrupt: dict[str, Tensor | None],
    metric: Any,
    max_rows: int,
) -> list[Any]:
    """The built-in component families: heads and neurons per tower, SAE features."""
    fams: list[Any] = []
    for tower in towers:
        cfg = pair.config.tower(tower)
        if "heads" in kinds:
            fams.append(HeadFamily(tower, int(cfg.layers), int(cfg.heads)))
        if "neurons" in kinds:
            fams.append(NeuronFamily(tower, int(cfg.layers), int(cfg.mlp_width)))
    if "features" in kinds:
        if not saes:
            raise InputError("components='features' needs saes={hook: TopKSAE}")
        fams += feature_families(
            pair, clean["image"], clean["text"], corrupt["image"], corrupt["text"],
            saes=saes, towers=towers, metric=metric, max_rows=max_rows,
        )  # fmt: skip
    return fams
