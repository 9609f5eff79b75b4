"""Stage ``score``: concept selectivity of every SAE feature and neuron, and the ground truth.

Writes ``RUN/score/<modality>/`` (the SAE features' per-unit tables, ``scores.zarr`` and
``summary.json``, as ``vlmfast score`` writes them), ``RUN/score/neurons/<hook>/`` and
``result.json``: per modality the counts of selective units by concept kind (with their
intervals), the polysemantic and modality-invariant fractions, the synthetic ground-truth
table (the best feature per planted shape and color, per modality) and the paper's counts
beside ours, labelled as its claim.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from vlmfast.pipeline.context import StageContext
from vlmfast.pipeline.stages._common import is_synthetic, neuron_hooks, sae_hooks


def ground_truth_table(
    results: dict[str, Any], target: float, log: Callable[[str], None]
) -> dict[str, Any]:
    """Per planted shape and color: the best feature's AUROC (with its 95% interval) in each
    modality's SAE, and whether it reaches ``target``."""
    from vlmfast.data.synthetic import spec as sspec

    planted = [*sspec.SHAPES, *sspec.COLORS]
    table: dict[str, Any] = {}
    log(
        f"  {'concept':<10}"
        + "".join(f"{m + ' feature':>16}{'AUROC':>8}{'95% CI':>17}{'ok':>4}" for m in results)
    )
    for name in planted:
        row = f"  {name:<10}"
        table[name] = {}
        for mod, res in results.items():
            per = res.per_modality[mod]
            c = list(res.concepts.names).index(name)
            col = np.asarray(per.scores.auroc)[:, c]
            se = (
                np.asarray(per.scores.se)[:, c] if per.scores.se is not None else np.zeros_like(col)
            )
            unit = int(np.nanargmax(col))
            a, half = float(col[unit]), 1.96 * float(se[unit])
            ci = [max(0.0, a - half), min(1.0, a + half)]
            ok = bool(a >= target)
            table[name][mod] = {"feature": unit, "auroc": a, "ci": ci, "recovered": ok}
            row += (
                f"{unit:>16}{a:>8.3f}{f'[{ci[0]:.3f}, {ci[1]:.3f}]':>17}{'yes' if ok else 'no':>4}"
            )
        log(row)
    out: dict[str, Any] = {"concepts": table, "target_auroc": target, "planted": planted}
    for mod in results:
        hits = sum(table[n][mod]["recovered"] for n in planted)
        n_feat = int(results[mod].per_modality[mod].scores.auroc.shape[0])
        out[mod] = {"recovered": hits, "of": len(planted), "fraction": hits / len(planted)}
        log(
            f"  {mod}: {hits}/{len(planted)} planted shapes and colors "
            f"({100 * hits / len(planted):.0f}%) have a feature with AUROC >= {target} "
            f"(best of {n_feat} features: an optimistic pick; the interval is the chosen "
            "feature's DeLong 95%)"
        )
    return out


def _config(ctx: StageContext) -> Any:
    from vlmfast.scoring import ScoringConfig

    s = ctx.config.score
    return ScoringConfig.from_options(
        threshold=s.threshold, alpha=s.alpha, level=s.level, top_n=s.top_n
    )


def _score(
    ctx: StageContext, store: Any, hook: str, sae: Any, out: Any, meta: dict[str, Any]
) -> Any:
    from tqdm import tqdm

    from vlmfast.scoring.from_store import score_store

    total = int(store.n_rows(hook))
    with tqdm(total=total, unit="row", desc=f"score {hook}", disable=not ctx.progress) as bar:
        res = score_store(
            store, hook, sae=sae, tokens=ctx.config.score.tokens, config=_config(ctx),
            progress=bar.update, device=_device(ctx),
        )  # fmt: skip
    res.meta.update(meta)
    res.save(out)
    return res


def _device(ctx: StageContext) -> str:
    return ctx.config.sae.device or ctx.config.model.device


def _modality_summary(summary: dict[str, Any], mod: str, hook: str, source: str) -> dict[str, Any]:
    entry = dict(summary["modalities"].get(mod, {}))
    entry.update({"hook": hook, "source": source})
    inv = summary.get("invariant")
    entry["invariant"] = (
        inv
        if inv is not None
        else {
            "note": "units of a one-tower SAE are scored on that tower's rows only; modality "
            "invariance needs an SAE on joint.embed (both towers' rows)"
        }
    )
    return entry


def run(ctx: StageContext) -> dict[str, Any]:
    from vlmfast.sae import TopKSAE
    from vlmfast.scoring import format_summary
    from vlmfast.store import ActivationStore

    cfg = ctx.config
    pair = ctx.pair()
    store = ActivationStore.open(ctx.upstream("cache") / "store.zarr")
    results: dict[str, Any] = {}
    out: dict[str, Any] = {"modalities": {}, "neurons": {}}
    definitions: dict[str, Any] = {}
    saes: dict[str, Any] = {}
    for mod, hook in sae_hooks(cfg, pair).items():
        sae = TopKSAE.load(ctx.upstream("train-sae") / mod, device=_device(ctx))
        saes[mod] = sae
        meta = {"store": "cache/store.zarr", "sae": f"train-sae/{mod}"}
        res = _score(ctx, store, hook, sae, ctx.dir / mod, meta)
        results[mod] = res
        summary = res.summary()
        definitions = summary.get("definitions", definitions)
        ctx.log(f"  SAE features of {hook}, {mod} samples ({cfg.score.tokens} over tokens):")
        ctx.log("    " + format_summary(summary).replace("\n", "\n    "))
        out["modalities"][mod] = _modality_summary(summary, mod, hook, "sae") | {"scores": mod}
    for hook in neuron_hooks(cfg, pair):
        name = f"neurons/{hook}"
        res = _score(ctx, store, hook, None, ctx.dir / name, {"store": "cache/store.zarr"})
        summary = res.summary()
        ctx.log(f"  units of {hook} ({cfg.score.tokens} over tokens):")
        ctx.log("    " + format_summary(summary).replace("\n", "\n    "))
        out["neurons"][hook] = {
            mod: _modality_summary(summary, mod, hook, "units") | {"scores": name}
            for mod in summary["modalities"]
        }
    out["definitions"] = definitions
    gt = cfg.score.ground_truth
    if results and (gt == "synthetic" or (gt == "auto" and is_synthetic(cfg.data.spec))):
        ctx.log("")
        ctx.log("  ground truth: the best feature for each planted shape and color")
        out["ground_truth"] = ground_truth_table(results, cfg.score.target_auroc, ctx.log)
        from vlmfast.scoring.relation_probe import relation_ground_truth

        # bound relations: a probe on the image hook's CLS rows / the text hook's EOT rows,
        # beside the best single unit and the best SAE feature (max over tokens)
        out["ground_truth"]["bound_relations"] = relation_ground_truth(
            store, sae_hooks(cfg, pair), saes=saes, device=_device(ctx)
        )
    else:
        out["ground_truth"] = None
    out["paper_claims"] = (
        {
            "label": "the paper's claim, beside ours: its models and data (not this run's)",
            **cfg.score.paper_claims,
        }
        if cfg.score.paper_claims
        else None
    )
    if out["paper_claims"]:
        ctx.log("  " + format_paper_claims(out["paper_claims"]))
    return out


def format_paper_claims(claims: dict[str, Any]) -> str:
    """One line quoting the paper's counts, labelled as its claim."""
    items = ", ".join(f"{k} {v}" for k, v in claims.items() if k not in ("label", "note"))
    note = f" ({claims['note']})" if claims.get("note") else ""
    return f"{claims.get('label', 'the paper claims')}: {items}{note}"
