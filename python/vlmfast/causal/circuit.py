"""Circuit discovery: the smallest set of components that keeps the pair's score.

    c = vf.causal.find_circuit(pair, images=px, texts=tok, corrupt_images=px_c,
                               components=("heads", "neurons"), towers=("image", "text"),
                               ranking="atp", ablation="mean", target=0.8, null=100, seed=0)
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
difference (``_circuit_engine``); ``method="serial"`` runs one full forward per size (the
reference). Causal text towers with EOT pooling run on tokens cut after the last EOT
(later positions cannot reach it; exact). The null (``null`` random orderings of the same
nodes, see ``_circuit_null``) is batched the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vlmfast.causal import _backend as backend
from vlmfast.causal._circuit_engine import (
    ABLATIONS,
    DEFAULT_MAX_ROWS,
    CircuitEvaluator,
    HeadFamily,
    NeuronFamily,
)
from vlmfast.causal._circuit_null import (
    MIN_NULL_FOR_PVALUE,
    area,
    keep_masks,
    log_grid,
    run_null,
    sparsity_index,
    thin_grid,
)
from vlmfast.causal.circuit_result import Circuit
from vlmfast.causal.circuit_types import CircuitNode
from vlmfast.causal.conventions import (
    RECOVERY_TOL,
    TOWERS,
    check_choice,
    check_eval_mode,
    check_paired,
)
from vlmfast.causal.metrics import Metric, metric_space, resolve_metric
from vlmfast.errors import InputError

__all__ = ["COMPONENTS", "RANKINGS", "find_circuit"]

COMPONENTS = ("heads", "neurons", "features")
DEFAULT_COMPONENTS = ("heads", "neurons")  # features need saes=
RANKINGS = ("atp", "atp*", "exact")
DEFAULT_GRID = 32
DEFAULT_BOOT = 1000
REFINE_POINTS = 16


def find_circuit(
    pair: Any,
    images: Any,
    texts: Any,
    corrupt_images: Any = None,
    corrupt_texts: Any = None,
    *,
    components: Sequence[str] = DEFAULT_COMPONENTS,
    towers: Sequence[str] = TOWERS,
    ranking: str | Sequence[Any] = "atp",
    ablation: str = "mean",
    target: float = 0.8,
    null: int = 100,
    seed: int = 0,
    metric: str | Metric = "score",
    reference: dict[str, Any] | None = None,
    families: Sequence[Any] = (),
    saes: dict[str, Any] | None = None,
    grid: int = DEFAULT_GRID,
    null_grid: int | None = None,
    pvalue: bool = True,
    n_boot: int = DEFAULT_BOOT,
    level: float = 0.95,
    tol: float = RECOVERY_TOL,
    method: str = "batched",
    max_rows: int = DEFAULT_MAX_ROWS,
    progress: bool = False,
) -> Circuit:
    """Ranks components, evaluates the faithfulness curve and picks the circuit.

    Args:
        pair: a HookedPair in eval mode.
        images, texts: the clean inputs (pixels / token ids or PIL images / strings),
            image ``i`` paired with caption ``i``.
        corrupt_images, corrupt_texts: corrupted inputs (same shapes): the ranking's
            counterfactual (atp / atp*) and the ``"resample"`` ablation's source.
        components: ``"heads"`` (``attn.z``), ``"neurons"`` (``mlp.post``) and/or
            ``"features"`` (the latents of ``saes`` plus one error node per hook and
            position; see ``vf.causal.feature_circuit``); may be empty when ``families``
            are given.
        towers: the towers whose components are candidates.
        ranking: ``"atp"``, ``"atp*"``, ``"exact"`` or an explicit order (see module doc).
        ablation: ``"mean"``, ``"resample"`` or ``"zero"`` (see module doc).
        target: faithfulness the circuit must keep, in ``(0, 1]``.
        null: random orderings for the null (0 = none; 1..19 only with ``pvalue=False``).
        seed: seed of the null orderings and the bootstrap.
        metric: ``"score"``, ``"logit_diff"``, ``"alignment"`` or a callable on
            ``[..., n_img, n_txt]`` similarities.
        reference: inputs the ``"mean"`` ablation averages over (default: the clean batch).
        families: extra component families (the ``_circuit_engine`` protocol), e.g. SAE
            features; their nodes join the candidates.
        saes: ``{hook: TopKSAE}`` spliced for ``"features"`` (one SAE per block).
        grid: how many sizes the log-spaced grid has (0 and N included).
        null_grid: how many of those sizes the null orderings are evaluated at (None: all;
            a smaller number is an evenly thinned subset, 0 and N included, and the
            observed sparsity of the p-value is read on the same subset). Random
            orderings share little computation, so the null costs ~``null`` curves;
            this is the knob for big node sets.
        pvalue: whether the null reports a p-value (needs ``null >= 20``).
        n_boot: bootstrap resamples of the examples for the faithfulness interval.
        level: central level of the bootstrap and null intervals.
        tol: the smallest ``|m(model) - m(empty)|`` faithfulness may divide by.
        method: ``"batched"`` or ``"serial"`` (one forward per size: the reference).
        max_rows: the most batch rows per forward (variants x pairs).
        progress: tqdm progress bars for the stages.
    """
    kinds, tower_list = _check_args(
        pair, components, towers, ranking, ablation, target, null, pvalue, families
    )
    check_choice(method, ("batched", "serial"), "method")
    if not isinstance(grid, int) or grid < 2:
        raise InputError(f"grid must be an int >= 2 (sizes on the curve), got {grid!r}")
    if null_grid is not None and (
        not isinstance(null_grid, int) or isinstance(null_grid, bool) or null_grid < 2
    ):
        raise InputError(
            f"null_grid must be None or an int >= 2 (sizes per null curve), got {null_grid!r}"
        )
    if max_rows < 1:
        raise InputError(f"max_rows must be >= 1, got {max_rows}")
    if not 0 < level < 1:
        raise InputError(f"level must be in (0, 1), got {level!r}")
    metric_fn = resolve_metric(metric)
    space = metric_space(metric_fn)
    clean, corrupt, ref = _inputs(pair, images, texts, corrupt_images, corrupt_texts, reference)
    n = int(clean["image"].shape[0])
    resample, resample_source = _resample_inputs(clean, corrupt, ablation)
    fams = _families(pair, kinds, tower_list, saes, clean, corrupt, metric, max_rows)
    fams += list(families)

    from tqdm import tqdm

    bar = tqdm(total=4 + int(null > 0), desc="circuit", unit="stage", disable=not progress)
    bar.set_postfix_str("clean runs")
    evaluator = CircuitEvaluator(
        pair,
        clean,
        fams,
        metric_fn,
        space,
        ablation=ablation,
        reference=ref,
        resample=resample,
        max_rows=max_rows,
    )
    nodes = evaluator.nodes
    n_nodes = len(nodes)
    if n_nodes == 0:
        raise InputError("no candidate components (components= and families= are empty)")
    bar.update()
    bar.set_postfix_str(f"ranking ({ranking if isinstance(ranking, str) else 'given'})")
    order, scores = _rank(
        pair, evaluator, ranking, clean, corrupt, kinds, tower_list, metric, max_rows
    )
    bar.update()

    def evaluate(keep: Tensor) -> Tensor:
        return evaluator.evaluate(keep, method).metric

    bar.set_postfix_str("curve")
    ks = log_grid(n_nodes, grid)
    ev = evaluator.evaluate(keep_masks(order, ks, n_nodes), method)
    m_by_k = dict(zip(ks, ev.metric.tolist(), strict=True))
    sim_by_k = {0: ev.sim[0], n_nodes: ev.sim[-1]}
    m_empty, m_model = m_by_k[0], m_by_k[n_nodes]
    denom = m_model - m_empty
    if not abs(denom) > tol:
        raise InputError(
            f"faithfulness is undefined: m(model) {m_model:.6g} and m(empty) {m_empty:.6g} "
            f"differ by {abs(denom):.3g} <= tol {tol:g} (ablating every candidate barely "
            "moves the metric); use other components, another ablation or another metric"
        )

    def f_of(m: float) -> float:
        return (m - m_empty) / denom

    grid_f = [f_of(m_by_k[k]) for k in ks]
    grid_size = ks[sparsity_index(grid_f, target)]
    # refine: evaluate sizes between the crossing and the evaluated size below it
    while True:
        done = sorted(m_by_k)
        fs = [f_of(m_by_k[k]) for k in done]
        i = sparsity_index(fs, target)
        hi, lo = done[i], done[i - 1] if i > 0 else done[i]
        if hi - lo <= 1:
            break
        step = (hi - lo) / (REFINE_POINTS + 1)
        inner = sorted({round(lo + step * (j + 1)) for j in range(REFINE_POINTS)} - {lo, hi})
        inner = [k for k in inner if lo < k < hi] or list(range(lo + 1, hi))
        got = evaluate(keep_masks(order, inner, n_nodes))
        m_by_k.update(zip(inner, got.tolist(), strict=True))
    size = done[i]
    bar.update()

    bar.set_postfix_str("circuit, complement")
    keep_c = keep_masks(order, [size], n_nodes)
    ev_c = evaluator.evaluate(torch.cat([keep_c, ~keep_c]), method)
    m_circuit, m_complement = m_by_k[size], float(ev_c.metric[1])
    sim_by_k[size] = ev_c.sim[0]
    f_size = f_of(m_circuit)
    interval = _bootstrap(
        metric_fn, sim_by_k[size], sim_by_k[0], sim_by_k[n_nodes], n_boot, seed, level
    )
    bar.update()

    null_summary = None
    ks_null = ks if null_grid is None else thin_grid(ks, null_grid)
    null_size = ks_null[sparsity_index([f_of(m_by_k[k]) for k in ks_null], target)]
    if null:
        bar.set_postfix_str(f"null ({null} orderings)")
        null_summary = run_null(
            evaluate,
            n_nodes,
            ks_null,
            size=null,
            seed=seed,
            target=target,
            m_empty=m_empty,
            m_model=m_model,
            observed_sparsity=null_size / n_nodes,
            pvalue=pvalue,
            level=level,
        )
        bar.update()
    bar.close()
    done = sorted(m_by_k)
    curve = [f_of(m_by_k[k]) for k in done]
    on_grid = set(ks)
    return Circuit(
        nodes=[nodes[int(j)] for j in order[:size]],
        order=[nodes[int(j)] for j in order],
        scores=None if scores is None else [float(scores[int(j)]) for j in order],
        k=done,
        curve=curve,
        metric=[m_by_k[k] for k in done],
        on_grid=[k in on_grid for k in done],
        size=size,
        n_nodes=n_nodes,
        target=float(target),
        faithfulness=f_size,
        faithfulness_interval=interval,
        completeness=f_of(m_complement),
        metric_model=m_model,
        metric_empty=m_empty,
        metric_circuit=m_circuit,
        metric_complement=m_complement,
        auc=area(done, curve, n_nodes),
        cmd=area(done, [abs(1.0 - f) for f in curve], n_nodes),
        ablation=ablation,
        ranking=ranking if isinstance(ranking, str) else "given",
        null=null_summary,
        level=level,
        meta={
            "metric": metric if isinstance(metric, str) else repr(metric_fn),
            "model": getattr(pair, "spec", "") or pair.config.name,
            "n_pairs": n,
            "components": kinds,
            "towers": tower_list,
            "families": [f"{f.tower}/{f.kind}" for f in fams],
            "ablation_detail": _ablation_detail(ablation, ref is not None),
            "resample_source": resample_source if ablation == "resample" else None,
            "grid_size": grid_size,
            "null_grid": len(ks_null),
            "null_grid_size": null_size,
            "text_tokens": int(clean["text"].shape[1]),
            "method": method,
            "n_boot": n_boot,
            "seed": seed,
            "corrupted": [t for t in TOWERS if corrupt[t] is not None],
        },
    )


# ---------------------------------------------------------------------- checks, inputs


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
        from vlmfast.causal.feature_circuit import feature_families

        fams += feature_families(
            pair, clean["image"], clean["text"], corrupt["image"], corrupt["text"],
            saes=saes, towers=towers, metric=metric, max_rows=max_rows,
        )  # fmt: skip
    return fams


def _check_args(
    pair: Any,
    components: Sequence[str],
    towers: Sequence[str],
    ranking: Any,
    ablation: str,
    target: float,
    null: int,
    pvalue: bool,
    families: Sequence[Any],
) -> tuple[list[str], list[str]]:
    check_eval_mode(pair, "vf.causal.find_circuit")
    comps = [components] if isinstance(components, str) else list(components)
    for c in comps:
        check_choice(c, COMPONENTS, "components")
    if not comps and not families:
        raise InputError(f"components is empty; expected some of {list(COMPONENTS)}")
    tw = [towers] if isinstance(towers, str) else list(towers)
    if not tw:
        raise InputError(f"towers is empty; expected some of {list(TOWERS)}")
    for t in tw:
        check_choice(t, TOWERS, "towers")
    if isinstance(ranking, str):
        check_choice(ranking, RANKINGS, "ranking")
    elif not isinstance(ranking, Sequence):
        raise InputError(
            f"ranking must be one of {list(RANKINGS)} or a list of nodes, got {ranking!r}"
        )
    check_choice(ablation, ABLATIONS, "ablation")
    if not isinstance(target, int | float) or not 0 < float(target) <= 1:
        raise InputError(f"target must be in (0, 1], got {target!r}")
    if not isinstance(null, int) or null < 0:
        raise InputError(f"null must be an int >= 0 (random orderings), got {null!r}")
    if pvalue and 0 < null < MIN_NULL_FOR_PVALUE:
        raise InputError(
            f"null={null} random orderings cannot give a p-value (the smallest possible is "
            f"1/{null + 1}); use null >= {MIN_NULL_FOR_PVALUE}, null=0, or pvalue=False"
        )
    return list(dict.fromkeys(comps)), list(dict.fromkeys(tw))


def _inputs(
    pair: Any,
    images: Any,
    texts: Any,
    corrupt_images: Any,
    corrupt_texts: Any,
    reference: dict[str, Any] | None,
) -> tuple[dict[str, Tensor], dict[str, Tensor | None], dict[str, Tensor] | None]:
    img, txt = backend.as_inputs(pair, images, texts)
    c_img, c_txt = backend.as_inputs(pair, corrupt_images, corrupt_texts, need_both=False)
    if c_img is not None:
        check_paired(img, c_img, "images")
    if c_txt is not None:
        check_paired(txt, c_txt, "texts")
    ref: dict[str, Tensor] | None = None
    if reference is not None:
        if not isinstance(reference, dict) or not set(reference) <= {"images", "texts"}:
            raise InputError("reference must be {'images': px_ref, 'texts': tok_ref} (either)")
        r_img, r_txt = backend.as_inputs(
            pair, reference.get("images"), reference.get("texts"), need_both=False
        )
        if r_txt is not None and r_txt.shape[1] != txt.shape[1]:
            raise InputError(
                f"reference texts have {r_txt.shape[1]} tokens, the clean texts {txt.shape[1]}"
            )
        ref = {k: v for k, v in (("image", r_img), ("text", r_txt)) if v is not None}
    # a causal EOT-pooled text tower never reads positions after the last EOT
    cfg = pair.config.text
    if bool(cfg.causal) and cfg.pool == "eot":
        toks = [t for t in (txt, c_txt, ref.get("text") if ref else None) if t is not None]
        cut = max(int(t.argmax(-1).max()) for t in toks) + 1
        txt = txt[:, :cut]
        c_txt = c_txt[:, :cut] if c_txt is not None else None
        if ref and "text" in ref:
            ref["text"] = ref["text"][:, :cut]
    return {"image": img, "text": txt}, {"image": c_img, "text": c_txt}, ref


def _resample_inputs(
    clean: dict[str, Tensor], corrupt: dict[str, Tensor | None], ablation: str
) -> tuple[dict[str, Tensor] | None, dict[str, str]]:
    if ablation != "resample":
        return None, {}
    out: dict[str, Tensor] = {}
    source: dict[str, str] = {}
    for t in TOWERS:
        c = corrupt[t]
        if c is not None:
            out[t], source[t] = c, "corrupt"
        else:
            if clean[t].shape[0] < 2:
                raise InputError(
                    f"ablation='resample' of the {t} tower needs corrupt {t} inputs or at "
                    "least 2 clean rows (it permutes the batch)"
                )
            out[t], source[t] = clean[t].roll(1, 0), "clean rolled by one row"
    return out, source


def _ablation_detail(ablation: str, has_reference: bool) -> str:
    if ablation == "mean":
        where = "the reference= batch" if has_reference else "the clean batch"
        return f"mean activation over {where}, per position"
    if ablation == "resample":
        return "activation of the same row of the corrupt inputs (or the clean batch rolled)"
    return "zero"


# ---------------------------------------------------------------------- ranking


def _rank(
    pair: Any,
    evaluator: CircuitEvaluator,
    ranking: Any,
    clean: dict[str, Tensor],
    corrupt: dict[str, Tensor | None],
    kinds: list[str],
    towers: list[str],
    metric: Any,
    max_rows: int,
) -> tuple[Tensor, Tensor | None]:
    """``(order [N] best first, score per node or None)``."""
    nodes = evaluator.nodes
    if not isinstance(ranking, str):
        return _given_order(nodes, ranking), None
    builtin = {
        (f.tower, f.kind) for f in evaluator.families if isinstance(f, HeadFamily | NeuronFamily)
    }
    tables: dict[tuple[str, str], Tensor] = {}
    if builtin and ranking in ("atp", "atp*"):
        if corrupt["image"] is None and corrupt["text"] is None:
            raise InputError(
                f"ranking={ranking!r} needs corrupt_images= or corrupt_texts= (the "
                "attribution's counterfactual); or use ranking='exact' or a given order"
            )
        from vlmfast.causal.attribution import attribute

        att = attribute(
            pair,
            clean["image"],
            clean["text"],
            corrupt["image"],
            corrupt["text"],
            components=[k for k in kinds if k != "features"],
            towers=towers,
            method=ranking,
            metric=metric,
            max_rows=max_rows,
        )
        tables = {key: att.ranking(key) for key in builtin}
    elif builtin:
        tables = _exact_tables(pair, evaluator, clean, metric, max_rows)
    scores = torch.zeros(len(nodes), dtype=torch.float64)
    col = 0
    for fam in evaluator.families:
        fam_nodes = fam.nodes()
        if (fam.tower, fam.kind) in tables and isinstance(fam, HeadFamily | NeuronFamily):
            t = tables[fam.tower, fam.kind]
            vals = torch.stack([t[nd.layer, nd.index] for nd in fam_nodes]).double()
        elif hasattr(fam, "scores"):
            vals = torch.as_tensor(fam.scores(ranking), dtype=torch.float64).flatten()
            if vals.numel() != len(fam_nodes):
                raise InputError(
                    f"family {fam.tower}/{fam.kind}: scores() gave {vals.numel()} values "
                    f"for {len(fam_nodes)} nodes"
                )
        else:
            raise InputError(
                f"family {fam.tower}/{fam.kind} has no scores(); rank it with an explicit "
                "order (ranking=[nodes...])"
            )
        scores[col : col + len(fam_nodes)] = vals.abs()
        col += len(fam_nodes)
    scores = torch.nan_to_num(scores, nan=0.0)
    return torch.argsort(-scores, stable=True), scores


def _exact_tables(
    pair: Any, evaluator: CircuitEvaluator, clean: dict[str, Tensor], metric: Any, max_rows: int
) -> dict[tuple[str, str], Tensor]:
    """``|m(model with one component ablated) - m(model)|`` per (tower, kind) via patch_sweep."""
    from vlmfast.causal.patching import patch_sweep

    out: dict[tuple[str, str], Tensor] = {}
    for fam in evaluator.families:
        if not isinstance(fam, HeadFamily | NeuronFamily):
            continue
        n = int(clean["image"].shape[0])
        src = {h: v.expand(n, *v.shape[1:]).contiguous() for h, v in fam.values.items()}
        delta = patch_sweep(
            pair,
            clean["image"],
            clean["text"],
            src,
            metric,
            component=fam.kind,
            tower=fam.tower,
            normalize="delta",
            max_rows=max_rows,
        )
        out[fam.tower, fam.kind] = delta.abs()
    return out


def _given_order(nodes: list[CircuitNode], given: Sequence[Any]) -> Tensor:
    index = {n.as_tuple(): i for i, n in enumerate(nodes)}
    first: list[int] = []
    for item in given:
        key = item.as_tuple() if isinstance(item, CircuitNode) else tuple(item)
        if len(key) != 4 or key not in index:
            raise InputError(
                f"ranking lists {item!r}, which is not a candidate (tower, kind, layer, index); "
                f"candidates look like {nodes[0].as_tuple() if nodes else None}"
            )
        if index[key] in first:
            raise InputError(f"ranking lists {item!r} twice")
        first.append(index[key])
    chosen = set(first)
    rest = [i for i in range(len(nodes)) if i not in chosen]
    return torch.tensor(first + rest, dtype=torch.long)


# ---------------------------------------------------------------------- bootstrap


def _bootstrap(
    metric_fn: Any,
    sim_c: Tensor,
    sim_0: Tensor,
    sim_n: Tensor,
    n_boot: int,
    seed: int,
    level: float,
) -> tuple[float, float]:
    """Percentile interval of f at the circuit's size, resampling examples (rows + their
    captions) with replacement and recomputing each metric from the similarities."""
    if n_boot <= 0:
        return (float("nan"), float("nan"))
    n = sim_c.shape[0]
    gen = torch.Generator().manual_seed(seed + 1)
    idx = torch.randint(0, n, (n_boot, n), generator=gen)

    def resampled(sim: Tensor) -> Tensor:
        rows = sim[idx]  # [B, n, n_txt]
        cols = idx.unsqueeze(1).expand(n_boot, n, n)
        return torch.as_tensor(metric_fn(torch.gather(rows[..., :n], 2, cols))).double()

    mc, m0, mn = resampled(sim_c), resampled(sim_0), resampled(sim_n)
    with np.errstate(divide="ignore", invalid="ignore"):
        f = ((mc - m0) / (mn - m0)).numpy()
    f = f[np.isfinite(f)]
    if f.size == 0:
        return (float("nan"), float("nan"))
    lo, hi = np.quantile(f, [(1 - level) / 2, 1 - (1 - level) / 2])
    return (float(lo), float(hi))
