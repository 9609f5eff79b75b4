"""Stage ``intervene``: ablate and steer each concept's most selective units against random
unit sets (``vf.causal.concept_intervention``): ``RUN/intervene/result.json`` =
``{"ablate": {concept: InterventionResult dict}, "steer": {...}, "units": ...}`` and
``intervene.parquet``."""

from __future__ import annotations

from typing import Any

from vlmfast.errors import InputError
from vlmfast.pipeline.context import StageContext
from vlmfast.pipeline.stages._common import neuron_hooks


def _scores_dir(ctx: StageContext) -> tuple[Any, str | None, str]:
    """The scores the units come from, the SAE checkpoint (or None) and the modality."""
    iv = ctx.config.intervene
    score_dir = ctx.upstream("score")
    if iv.units in ("image", "text"):
        path = score_dir / iv.units
        if not path.exists():
            raise InputError(
                f"[intervene] units = {iv.units!r}, but no {iv.units} SAE was scored "
                f"(set [hooks].{iv.units})"
            )
        return path, iv.units, iv.units
    hooks = neuron_hooks(ctx.config, ctx.pair())
    if not hooks:
        raise InputError("[intervene] units = 'neurons' needs a [hooks].neurons hook")
    tower = hooks[0].split(".", 1)[0]
    return score_dir / "neurons" / hooks[0], None, tower


def run(ctx: StageContext) -> dict[str, Any]:
    from tqdm import tqdm

    from vlmfast.causal import EvalSet, load_scores
    from vlmfast.causal.interventions.targets import intervene_on_concept, shared_concepts
    from vlmfast.tables import write_table

    cfg = ctx.config
    iv = cfg.intervene
    pair = ctx.pair()
    path, sae_mod, modality = _scores_dir(ctx)
    scores = load_scores(path)
    saes: dict[str, Any] = {}
    if sae_mod is not None:
        from vlmfast.sae import TopKSAE

        saes[str(scores.meta.get("sae") or "sae")] = TopKSAE.load(
            ctx.upstream("train-sae") / sae_mod
        )
    ev = EvalSet.from_spec(iv.eval_data, pair)
    shared = shared_concepts(scores, ev)
    targets = list(cfg.concepts.intervene)
    for c in targets:
        if c not in shared:
            raise InputError(
                f"[concepts] intervene: {c!r} is not both scored and in eval_data {iv.eval_data!r}; "
                f"candidates: {shared}"
            )
    out: dict[str, Any] = {mode: {} for mode in iv.modes}
    out["units"] = {}
    rows: list[dict[str, Any]] = []
    jobs = [(mode, c) for mode in iv.modes for c in targets]
    for mode, concept in tqdm(jobs, desc="intervene", unit="run", disable=not ctx.progress):
        units, r = intervene_on_concept(
            pair, scores, ev, concept, n=iv.n, modality=modality, candidates=shared, mode=mode,
            ablation=iv.ablation, alpha=iv.alpha if mode == "steer" else None, null=iv.null,
            seed=cfg.run.seed, pvalues=iv.null >= 20, saes=saes,
        )  # fmt: skip
        out["units"][concept] = units.to_dict()
        out[mode][concept] = r.to_dict()
        for row in r.rows():
            rows.append({"mode": mode, **row})
        v = r.verdict
        ctx.log(
            f"  {mode:6s} {concept:>10s}: {v['metric']} change {v['target_change']:+.3f} vs "
            f"others {v['others_mean_change']:+.3f}, p={v['pvalue']}, targeted={v['targeted']}"
        )
    if rows:
        keys = list(dict.fromkeys(k for r in rows for k in r))
        write_table([{k: r.get(k) for k in keys} for r in rows], ctx.dir / "intervene")
    return out
