"""Concept interventions: ablate or steer a concept's units and measure what moves.

    units = vf.causal.top_units(scores, "red", n=50)
    r = vf.causal.concept_intervention(pair, units, mode="ablate", ablation="mean",
                                       eval_data=vf.causal.EvalSet.synthetic(256),
                                       null=100, seed=0)
    r.target.delta["margin"], r.others.mean["margin"], r.null.pvalue["margin"], r.targeted

Every variant (the clean run, the target set, ``null`` random sets of the same size,
tower and layer mix, each strength of a steering sweep) is a block of batch rows of
the same forwards (``max_rows`` rows per forward), so a null of 100 sets or a sweep of
16 strengths x 8 concepts costs a few batched forwards instead of a Python loop of
forwards (``method="loop"`` is that loop: the reference the batched path is tested
against). A tower with no edited unit runs once.

Whether the effect is *targeted* (the paper's "targeted misalignment without degrading
overall performance") is a result, not an assumption: ``r.verdict`` compares the target
concept's change of the primary metric (zero-shot margin by default) with the null and
with the other concepts' mean change, and ``r.targeted`` is true only when it beats both.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from vlmfast.causal.edits import (
    batched_interventions,
    check_units,
    head_hook_of,
    single_variant_interventions,
)
from vlmfast.causal.evalset import METRICS, EvalSet, MetricTable, as_eval_set, concept_metrics
from vlmfast.causal.units import UnitSet, random_like
from vlmfast.errors import InputError
from vlmfast.models.interventions import Selector

MIN_NULL_FOR_PVALUES = 20
DEFAULT_MAX_ROWS = 2048


def _d(names: Sequence[str], values: npt.NDArray[np.float64]) -> dict[str, float]:
    return {k: float(v) for k, v in zip(names, values)}


@dataclass
class Effect:
    """Figures before and after the intervention (``METRICS`` keys) and their change."""

    clean: dict[str, float]
    after: dict[str, float]
    delta: dict[str, float]

    @classmethod
    def of(cls, clean: npt.NDArray[np.float64], after: npt.NDArray[np.float64]) -> Effect:
        return cls(_d(METRICS, clean), _d(METRICS, after), _d(METRICS, after - clean))


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
        out = asdict(self)
        out["units"] = self.units.to_dict()
        return out

    def to_json(self, **kw: Any) -> str:
        return json.dumps(self.to_dict(), default=float, **kw)

    def rows(self) -> list[dict[str, Any]]:
        """Long table: one row per (measured concept or overall, metric)."""
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


# ---------------------------------------------------------------------- the engine


@dataclass
class _Prepared:
    ev: EvalSet
    caption_tok: torch.Tensor
    prompt_tok: torch.Tensor
    owner: npt.NDArray[np.int64]
    clean_img: torch.Tensor
    clean_txt: torch.Tensor
    means: dict[str, torch.Tensor]
    feature_means: dict[tuple[str, str], torch.Tensor]
    head_means: dict[str, torch.Tensor]


def _prepare(
    pair: Any,
    ev: EvalSet,
    unit_sets: Sequence[UnitSet],
    saes: Mapping[str, Any],
    mode: str,
    ablation: str,
) -> _Prepared:
    prompts, owner = ev.prompt_texts()
    cap_tok = pair.tokenize(ev.captions)
    prm_tok = pair.tokenize(prompts)
    txt_all = torch.cat([cap_tok, prm_tok])
    hooks: dict[str, set[str]] = {"image": set(), "text": set()}
    for us in unit_sets:
        for u in us:
            if mode == "steer" and u.kind == "head":
                hooks[u.tower].add(head_hook_of(u))
            elif mode == "ablate" and (ablation == "mean" or u.kind == "feature"):
                hooks[u.tower].add(u.hook)
    with torch.no_grad():
        img = pair.run(images=ev.images, cache=sorted(hooks["image"]) or None)
        txt = pair.run(texts=txt_all, cache=sorted(hooks["text"]) or None)
    cache = {**img.cache, **txt.cache}
    means: dict[str, torch.Tensor] = {}
    feature_means: dict[tuple[str, str], torch.Tensor] = {}
    head_means: dict[str, torch.Tensor] = {}
    for us in unit_sets:
        for u in us:
            if mode == "steer" and u.kind == "head":
                h = head_hook_of(u)
                if h not in head_means:
                    x = cache[h].float()  # [B, T, H, d]
                    head_means[h] = x.mean(dim=(0, 1))
                    head_means[u.hook] = head_means[h]
            elif mode != "ablate":
                continue
            elif u.kind == "feature" and (u.hook, u.sae or "") not in feature_means:
                sae = saes[u.sae or ""]
                x = cache[u.hook].reshape(-1, cache[u.hook].shape[-1]).float()
                with torch.no_grad():
                    val, idx = sae.encode(x)
                tot = torch.zeros(int(sae.n_latents), dtype=torch.float64)
                tot.index_add_(0, idx.reshape(-1).long().cpu(), val.reshape(-1).double().cpu())
                feature_means[(u.hook, u.sae or "")] = (tot / x.shape[0]).float()
            elif u.kind != "feature" and u.hook not in means and u.hook in cache:
                means[u.hook] = cache[u.hook].mean(dim=0, keepdim=True)
    return _Prepared(
        ev,
        cap_tok,
        prm_tok,
        owner,
        img.image_embeds,
        txt.text_embeds,
        means,
        feature_means,
        head_means,
    )


def _run_variants(
    pair: Any,
    prep: _Prepared,
    variants: Sequence[tuple[UnitSet | None, float]],
    *,
    mode: str,
    ablation: str,
    saes: Mapping[str, Any],
    positions: Selector,
    max_rows: int,
    method: str,
    progress: Any = None,
) -> MetricTable:
    """METRICS of every variant (``(units or None, alpha)``), batched or in a loop."""
    ev = prep.ev
    n_cap = prep.caption_tok.shape[0]
    txt_in = torch.cat([prep.caption_tok, prep.prompt_tok])
    towers = {u.tower for us, _ in variants if us is not None for u in us}
    kw = dict(
        mode=mode,
        ablation=ablation,
        means=prep.means,
        feature_means=prep.feature_means,
        saes=saes,
        head_means=prep.head_means,
        positions=positions,
    )
    n_var = len(variants)
    img_out = prep.clean_img.unsqueeze(0).expand(n_var, -1, -1).clone()
    txt_out = prep.clean_txt.unsqueeze(0).expand(n_var, -1, -1).clone()
    with torch.no_grad():
        for tower in ("image", "text"):
            if tower not in towers:
                continue
            inputs = ev.images if tower == "image" else txt_in
            n_in = int(inputs.shape[0])
            target = img_out if tower == "image" else txt_out
            if method == "loop":
                for v, (units, alpha) in enumerate(variants):
                    if units is None:
                        continue
                    ivs = single_variant_interventions(pair, tower, units, alpha, **kw)  # type: ignore[arg-type]
                    out = pair.run(
                        **{"images" if tower == "image" else "texts": inputs}, interventions=ivs
                    )
                    target[v] = out.image_embeds if tower == "image" else out.text_embeds
                    if progress is not None:
                        progress(1)
                continue
            per = max(1, max_rows // n_in)
            for start in range(0, n_var, per):
                chunk = variants[start : start + per]
                ivs = batched_interventions(pair, tower, chunk, n_in, **kw)  # type: ignore[arg-type]
                if tower == "image":
                    stacked = inputs.repeat(len(chunk), 1, 1, 1)
                    emb = pair.run(images=stacked, interventions=ivs).image_embeds
                else:
                    stacked = inputs.repeat(len(chunk), 1)
                    emb = pair.run(texts=stacked, interventions=ivs).text_embeds
                target[start : start + len(chunk)] = emb.view(len(chunk), n_in, -1)
                if progress is not None:
                    progress(len(chunk))
    scale = pair.logit_scale.detach()
    bias = pair.logit_bias.detach() if pair.logit_bias is not None else None
    return concept_metrics(
        img_out, txt_out[:, :n_cap], txt_out[:, n_cap:], ev, prep.owner, scale, bias
    )


def _check_common(
    mode: str, ablation: str, alpha: Any, null: int, pvalues: bool, method: str, max_rows: int
) -> None:
    if mode not in ("ablate", "steer"):
        raise InputError(f"mode must be 'ablate' or 'steer', got {mode!r}")
    if ablation not in ("mean", "zero"):
        raise InputError(f"ablation must be 'mean' or 'zero', got {ablation!r}")
    if mode == "steer" and alpha is None:
        raise InputError("mode='steer' needs alpha= (the steering strength)")
    if not isinstance(null, int) or null < 0:
        raise InputError(f"null must be an int >= 0 (random unit sets), got {null!r}")
    if pvalues and null < MIN_NULL_FOR_PVALUES:
        raise InputError(
            f"null={null} random sets cannot give a permutation p-value (the smallest possible "
            f"is 1/(1+null)); use null >= {MIN_NULL_FOR_PVALUES}, or pvalues=False"
        )
    if method not in ("batched", "loop"):
        raise InputError(f"method must be 'batched' or 'loop', got {method!r}")
    if max_rows < 1:
        raise InputError(f"max_rows must be >= 1, got {max_rows}")


def _stat(delta: npt.NDArray[np.float64], alternative: str) -> npt.NDArray[np.float64]:
    if alternative == "decrease":
        return -delta
    if alternative == "increase":
        return delta
    return np.abs(delta)


def concept_intervention(
    pair: Any,
    units: UnitSet,
    *,
    mode: str = "ablate",
    ablation: str = "mean",
    alpha: float | None = None,
    eval_data: Any = "synthetic:test:256",
    concepts: Sequence[str] | None = None,
    concept: str | None = None,
    null: int = 100,
    seed: int = 0,
    pvalues: bool = True,
    alternative: str = "auto",
    primary: str = "margin",
    p_threshold: float = 0.05,
    level: float = 0.95,
    positions: Selector = None,
    saes: Mapping[str, Any] | None = None,
    max_rows: int = DEFAULT_MAX_ROWS,
    method: str = "batched",
) -> InterventionResult:
    """Ablate or steer ``units`` and measure the target concept, the others and overall.

    Args:
        pair: a HookedPair (eval mode).
        units: the units (``top_units``); their concept is the target unless ``concept=``.
        mode: ``"ablate"`` (set the units to their mean / zero) or ``"steer"`` (add
            ``alpha`` times the sum of the units' unit-norm directions at their write hooks:
            MLP output weight rows of neurons at ``mlp_out``, mean head outputs at
            ``attn_out``, SAE decoder rows at the SAE's hook).
        ablation: ``"mean"`` (over the eval inputs, per position) or ``"zero"``.
        eval_data: an ``EvalSet`` or a spec (``"synthetic:test:256"``).
        concepts: the concept vocabulary reported (default: all of ``eval_data``);
            zero-shot candidates are the concepts of the same kind among them.
        null: random unit sets of the same size and (hook, kind) mix; 0 for none.
        pvalues: permutation p-values ``(1 + #null >= observed) / (1 + null)`` (needs
            ``null >= 20``).
        alternative: which change is extreme: ``"decrease"``, ``"increase"``,
            ``"two-sided"`` or ``"auto"`` (decrease for ablation, the sign of alpha for steering).
        primary: the metric of the verdict (default the zero-shot margin).
        positions: token positions edited (default all).
        saes: ``{name: TopKSAE}`` for SAE-feature units.
        max_rows: most batch rows per forward; method: ``"batched"`` or ``"loop"`` (reference).
    """
    saes = dict(saes or {})
    _check_common(mode, ablation, alpha, null, pvalues, method, max_rows)
    if primary not in METRICS:
        raise InputError(f"primary must be one of {list(METRICS)}, got {primary!r}")
    if alternative == "auto":
        alternative = "decrease" if mode == "ablate" or float(alpha or 0.0) < 0 else "increase"
    if alternative not in ("decrease", "increase", "two-sided"):
        raise InputError(
            f"alternative must be auto/decrease/increase/two-sided, got {alternative!r}"
        )
    if bool(getattr(pair, "training", False)):
        raise InputError("concept_intervention needs the pair in eval mode: call pair.eval()")
    check_units(pair, units, saes)
    target = concept or units.concept
    if target is None:
        raise InputError("units carry no concept (not from top_units): pass concept=")
    ev = as_eval_set(eval_data, pair)
    names = list(concepts) if concepts is not None else list(ev.concepts)
    if target not in names:
        raise InputError(f"concept {target!r} is not among concepts={names}")
    missing = [c for c in names if c not in ev.concepts]
    if missing:
        raise InputError(f"concepts {missing} are not in eval_data (it has {list(ev.concepts)})")
    ev = ev.select(names)
    c = names.index(target)
    n_pos = int(ev.labels[:, c].sum())
    if n_pos == 0:
        raise InputError(f"eval_data has no image showing concept {target!r}")
    nulls = random_like(units, pair, null, seed, saes=saes) if null else []
    a = float(alpha) if alpha is not None else 0.0
    variants: list[tuple[UnitSet | None, float]] = [(None, 0.0), (units, a)] + [
        (n, a) for n in nulls
    ]
    prep = _prepare(pair, ev, [units, *nulls], saes, mode, ablation)
    table = _run_variants(
        pair,
        prep,
        variants,
        mode=mode,
        ablation=ablation,
        saes=saes,
        positions=positions,
        max_rows=max_rows,
        method=method,
    )
    per, overall = table.per_concept, table.overall
    clean = per[0]
    others_idx = [j for j in range(len(names)) if j != c]
    tgt = Effect.of(clean[c], per[1, c])
    others = OthersEffect(
        _d(METRICS, np.nanmean(per[1, others_idx] - clean[others_idx], axis=0))
        if others_idx
        else dict.fromkeys(METRICS, float("nan")),
        {names[j]: Effect.of(clean[j], per[1, j]) for j in others_idx},
    )
    ov = Effect.of(overall[0], overall[1])
    null_res: NullDistribution | None = None
    obs = per[1, c] - clean[c]
    if nulls:
        nd = per[2:, c] - clean[c]  # [K, M]
        ns = _stat(nd, alternative)
        os_ = _stat(obs, alternative)
        q = (1 - level) / 2
        pv = (1.0 + (ns >= os_[None, :] - 1e-12).sum(0)) / (1.0 + len(nulls)) if pvalues else None
        ext_idx = ns.argmax(0)
        null_res = NullDistribution(
            size=len(nulls),
            seed=seed,
            alternative=alternative,
            target={m: nd[:, k].tolist() for k, m in enumerate(METRICS)},
            mean=_d(METRICS, nd.mean(0)),
            low=_d(METRICS, np.quantile(nd, q, axis=0)),
            high=_d(METRICS, np.quantile(nd, 1 - q, axis=0)),
            extreme=_d(METRICS, nd[ext_idx, np.arange(len(METRICS))]),
            pvalue=_d(METRICS, pv) if pv is not None else None,
            others_mean=_d(
                METRICS,
                np.nanmean(per[2:, others_idx] - clean[None, others_idx], axis=(0, 1))
                if others_idx
                else np.full(len(METRICS), np.nan),
            ),
            overall_mean=_d(METRICS, (overall[2:] - overall[0]).mean(0)),
            level=level,
        )
    k = METRICS.index(primary)
    t_stat = float(_stat(obs, alternative)[k])
    o_stat = float(_stat(np.asarray([others.mean[primary]]), alternative)[0])
    verdict: dict[str, Any] = {
        "metric": primary,
        "alternative": alternative,
        "target_change": float(obs[k]),
        "others_mean_change": others.mean[primary],
        "target_stat": t_stat,
        "others_stat": o_stat,
        "ratio_to_others": t_stat / o_stat
        if o_stat > 0
        else float("inf")
        if t_stat > 0
        else float("nan"),
        "exceeds_others": bool(t_stat > 0 and t_stat > o_stat),
        "null_mean_change": null_res.mean[primary] if null_res else None,
        "pvalue": null_res.pvalue[primary] if null_res and null_res.pvalue else None,
        "p_threshold": p_threshold,
    }
    if null_res is not None and null_res.pvalue is not None:
        verdict["exceeds_null"] = bool(null_res.pvalue[primary] < p_threshold)
        verdict["targeted"] = bool(verdict["exceeds_null"] and verdict["exceeds_others"])
    else:
        verdict["exceeds_null"] = None
        verdict["targeted"] = None
    return InterventionResult(
        concept=target,
        mode=mode,
        ablation=ablation if mode == "ablate" else None,
        alpha=a if mode == "steer" else None,
        units=units,
        n_images=n_pos,
        target=tgt,
        others=others,
        overall=ov,
        null=null_res,
        verdict=verdict,
    )


# ---------------------------------------------------------------------- steering sweeps


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
        """Change of ``measured`` (default the target itself) along the alphas."""
        t = self.targets.index(target)
        c = self.concepts.index(measured or target)
        return self.delta[t, :, c, METRICS.index(metric)].tolist()

    def to_dict(self) -> dict[str, Any]:
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
    max_rows: int = DEFAULT_MAX_ROWS,
    method: str = "batched",
) -> SteeringSweep:
    """Steer every unit set at every alpha; all (set, alpha) variants share batched forwards.

    ``units``: ``{concept: UnitSet}`` or unit sets carrying their concept (``top_units``).
    """
    saes = dict(saes or {})
    _check_common("steer", "mean", 0.0, 0, pvalues=False, method=method, max_rows=max_rows)
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
    prep = _prepare(pair, ev, list(sets.values()), saes, "steer", "mean")
    table = _run_variants(
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
