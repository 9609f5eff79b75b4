"""Concept interventions: ablate or steer a concept's units and measure what moves.

    units = vf.causal.top_units(scores, "red", n=50)
    r = vf.causal.concept_intervention(pair, units, mode="ablate", ablation="mean",
                                       eval_data=vf.causal.EvalSet.synthetic(256),
                                       null=100, seed=0)
    # the same: concept_intervention(pair, units, InterventionConfig(null=100, seed=0))
    r.target.delta["margin"], r.others.mean["margin"], r.null.pvalue["margin"], r.targeted

Every variant (the clean run, the target set, ``null`` random sets of the same size,
tower and layer mix, each strength of a steering sweep) is a block of batch rows of
the same forwards (``max_rows`` rows per forward), so a null of 100 sets or a sweep of
16 strengths x 8 concepts costs a few batched forwards instead of a Python loop of
forwards (``method="serial"`` is that loop: the reference the batched path is tested
against; ``"loop"``, its old name, still works with a DeprecationWarning). A tower with no edited unit runs once.

Whether the effect is *targeted* (the paper's "targeted misalignment without degrading
overall performance") is a result, not an assumption: ``r.verdict`` compares the target
concept's change of the primary metric (zero-shot margin by default) with the null and
with the other concepts' mean change, and ``r.targeted`` is true only when it beats both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from vlmfast.causal.core.evalset import METRICS, EvalSet, as_eval_set
from vlmfast.causal.core.units import UnitSet, random_like
from vlmfast.causal.interventions.config import InterventionConfig
from vlmfast.causal.interventions.edits import check_units
from vlmfast.causal.interventions.result import (
    Effect,
    InterventionResult,
    NullDistribution,
    OthersEffect,
    by_metric,
)
from vlmfast.causal.interventions.variants import (
    check_common,
    prepare_eval,
    run_variants,
    serial_name,
)
from vlmfast.errors import InputError

ALTERNATIVES = ("decrease", "increase", "two-sided")


def concept_intervention(
    pair: Any,
    units: UnitSet,
    config: InterventionConfig | None = None,
    **options: Any,
) -> InterventionResult:
    """Ablate or steer ``units`` and measure the target concept, the others and overall.

    Args:
        pair: a HookedPair (eval mode).
        units: the units (``top_units``); their concept is the target unless ``concept=``.
        config: an :class:`InterventionConfig` (every option, documented per field).
        **options: the same options as keywords (``mode=``, ``ablation=``, ``alpha=``,
            ``eval_data=``, ``null=``, ``seed=``, ...); they replace ``config``'s fields.

    Returns:
        The target's, the other concepts' and the overall figures (``METRICS``: margin
            and score in logits, cosine, zero-shot and retrieval as fractions in [0, 1])
            before and after, with the random-set null and verdict, as an
            :class:`InterventionResult`.

    Raises:
        InputError: a pair in training mode, a bad option, a target concept that is
            unknown, missing or shown by no image.
        TypeError: an unknown option.
    """
    cfg = InterventionConfig.build(config, options)
    method = serial_name(cfg.method)
    saes = dict(cfg.saes or {})
    alternative = _check(pair, units, cfg, method, saes)
    target, ev, c = _target(pair, units, cfg)
    n_pos = int(ev.labels[:, c].sum())
    if n_pos == 0:
        raise InputError(f"eval_data has no image showing concept {target!r}")
    nulls = random_like(units, pair, cfg.null, cfg.seed, saes=saes) if cfg.null else []
    a = float(cfg.alpha) if cfg.alpha is not None else 0.0
    variants: list[tuple[UnitSet | None, float]] = [(None, 0.0), (units, a)] + [
        (n, a) for n in nulls
    ]
    prep = prepare_eval(pair, ev, [units, *nulls], saes, cfg.mode, cfg.ablation)
    table = run_variants(
        pair,
        prep,
        variants,
        mode=cfg.mode,
        ablation=cfg.ablation,
        saes=saes,
        positions=cfg.positions,
        max_rows=cfg.max_rows,
        method=method,
    )
    figures = _Figures(table.per_concept, table.overall, c, list(ev.concepts))
    others = figures.others()
    null_res = _null(figures, len(nulls), cfg, alternative) if nulls else None
    return InterventionResult(
        concept=target,
        mode=cfg.mode,
        ablation=cfg.ablation if cfg.mode == "ablate" else None,
        alpha=a if cfg.mode == "steer" else None,
        units=units,
        n_images=n_pos,
        target=Effect.of(figures.clean[c], figures.per[1, c]),
        others=others,
        overall=Effect.of(figures.overall[0], figures.overall[1]),
        null=null_res,
        verdict=_verdict(figures.observed(), others, null_res, cfg, alternative),
    )


def _check(
    pair: Any, units: UnitSet, cfg: InterventionConfig, method: str, saes: dict[str, Any]
) -> str:
    """Validates the options; returns the resolved ``alternative``."""
    check_common(cfg.mode, cfg.ablation, cfg.alpha, cfg.null, cfg.pvalues, method, cfg.max_rows)
    if cfg.primary not in METRICS:
        raise InputError(f"primary must be one of {list(METRICS)}, got {cfg.primary!r}")
    alternative = cfg.alternative
    if alternative == "auto":
        down = cfg.mode == "ablate" or float(cfg.alpha or 0.0) < 0
        alternative = "decrease" if down else "increase"
    if alternative not in ALTERNATIVES:
        raise InputError(
            f"alternative must be auto/decrease/increase/two-sided, got {alternative!r}"
        )
    if bool(getattr(pair, "training", False)):
        raise InputError("concept_intervention needs the pair in eval mode: call pair.eval()")
    check_units(pair, units, saes)
    return alternative


def _target(pair: Any, units: UnitSet, cfg: InterventionConfig) -> tuple[str, EvalSet, int]:
    """``(target concept, eval set restricted to the reported concepts, target column)``."""
    target = cfg.concept or units.concept
    if target is None:
        raise InputError("units carry no concept (not from top_units): pass concept=")
    ev = as_eval_set(cfg.eval_data, pair)
    names = list(cfg.concepts) if cfg.concepts is not None else list(ev.concepts)
    if target not in names:
        raise InputError(f"concept {target!r} is not among concepts={names}")
    missing = [c for c in names if c not in ev.concepts]
    if missing:
        raise InputError(f"concepts {missing} are not in eval_data (it has {list(ev.concepts)})")
    return target, ev.select(names), names.index(target)


@dataclass
class _Figures:
    """Per-concept ``[V, C, M]`` and overall ``[V, M]`` figures: clean, target set, nulls."""

    per: npt.NDArray[np.float64]
    overall: npt.NDArray[np.float64]
    c: int
    names: list[str]

    @property
    def clean(self) -> npt.NDArray[np.float64]:
        return self.per[0]

    @property
    def others_idx(self) -> list[int]:
        return [j for j in range(len(self.names)) if j != self.c]

    def observed(self) -> npt.NDArray[np.float64]:
        """The target concept's change under the target set ``[M]``."""
        return self.per[1, self.c] - self.clean[self.c]

    def others(self) -> OthersEffect:
        idx = self.others_idx
        clean = self.clean
        return OthersEffect(
            by_metric(METRICS, np.nanmean(self.per[1, idx] - clean[idx], axis=0))
            if idx
            else dict.fromkeys(METRICS, float("nan")),
            {self.names[j]: Effect.of(clean[j], self.per[1, j]) for j in idx},
        )


def _stat(delta: npt.NDArray[np.float64], alternative: str) -> npt.NDArray[np.float64]:
    if alternative == "decrease":
        return -delta
    if alternative == "increase":
        return delta
    return np.abs(delta)


def _null(fig: _Figures, size: int, cfg: InterventionConfig, alternative: str) -> NullDistribution:
    """The target's changes under the random sets, their interval and p-values."""
    per, clean, c, idx = fig.per, fig.clean, fig.c, fig.others_idx
    nd = per[2:, c] - clean[c]  # [K, M]
    ns = _stat(nd, alternative)
    os_ = _stat(fig.observed(), alternative)
    q = (1 - cfg.level) / 2
    pv = (1.0 + (ns >= os_[None, :] - 1e-12).sum(0)) / (1.0 + size) if cfg.pvalues else None
    ext_idx = ns.argmax(0)
    return NullDistribution(
        size=size,
        seed=cfg.seed,
        alternative=alternative,
        target={m: nd[:, k].tolist() for k, m in enumerate(METRICS)},
        mean=by_metric(METRICS, nd.mean(0)),
        low=by_metric(METRICS, np.quantile(nd, q, axis=0)),
        high=by_metric(METRICS, np.quantile(nd, 1 - q, axis=0)),
        extreme=by_metric(METRICS, nd[ext_idx, np.arange(len(METRICS))]),
        pvalue=by_metric(METRICS, pv) if pv is not None else None,
        others_mean=by_metric(
            METRICS,
            np.nanmean(per[2:, idx] - clean[None, idx], axis=(0, 1))
            if idx
            else np.full(len(METRICS), np.nan),
        ),
        overall_mean=by_metric(METRICS, (fig.overall[2:] - fig.overall[0]).mean(0)),
        level=cfg.level,
    )


def _verdict(
    obs: npt.NDArray[np.float64],
    others: OthersEffect,
    null_res: NullDistribution | None,
    cfg: InterventionConfig,
    alternative: str,
) -> dict[str, Any]:
    """Whether the target's change beats the null and the other concepts' mean change."""
    primary = cfg.primary
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
        "p_threshold": cfg.p_threshold,
    }
    if null_res is not None and null_res.pvalue is not None:
        verdict["exceeds_null"] = bool(null_res.pvalue[primary] < cfg.p_threshold)
        verdict["targeted"] = bool(verdict["exceeds_null"] and verdict["exceeds_others"])
    else:
        verdict["exceeds_null"] = None
        verdict["targeted"] = None
    return verdict


__all__ = ["InterventionConfig", "concept_intervention"]
