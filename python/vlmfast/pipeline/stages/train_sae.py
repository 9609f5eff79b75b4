"""Stage ``train-sae``: one top-k SAE per modality hook, into ``RUN/train-sae/<modality>/``.

It trains through the library's one recipe (:func:`vlmfast.sae.train_sae`), the one
``vlmfast train-sae`` calls: the same token rows (``[sae] rows``, default ``tokens``: an
image hook's patch rows, its CLS row left out, and a text hook's token rows), the same
shuffling and batches whether the store is held in memory or streamed.
"""

from __future__ import annotations

from typing import Any

from vlmfast.pipeline.context import StageContext
from vlmfast.pipeline.stages._common import sae_hooks

_TIMING_KEYS = ("tokens_per_s", "seconds", "elapsed", "time")
STAGE_WARMUP_STEPS = 100
"""The stage's learning-rate warm-up (``vlmfast train-sae``'s default is 5% of the steps)."""
STAGE_DEAD_TOKENS = 10_000_000
"""Rows without firing before a latent counts as dead, in the stage."""
STAGE_INIT_SEED = 0
"""Seed of the stage's SAE weights: it has always been 0 (``run.seed`` seeds the batches),
kept so that existing runs reproduce."""


def open_store(ctx: StageContext) -> Any:
    from vlmfast.store import ActivationStore

    return ActivationStore.open(ctx.upstream("cache") / "store.zarr")


def sae_config(ctx: StageContext, hook: str) -> Any:
    """The :class:`vlmfast.sae.TrainSAEConfig` of this run's SAE on ``hook``."""
    from vlmfast.sae import TrainSAEConfig

    cfg = ctx.config
    s = cfg.sae
    return TrainSAEConfig(
        hook=hook,
        k=[s.k],
        n_latents=[s.n_latents],
        lr=[s.lr],
        rows=s.rows,
        batch_size=s.batch_size,
        steps=s.steps,
        warmup_steps=STAGE_WARMUP_STEPS,
        dead_tokens=STAGE_DEAD_TOKENS,
        seed=cfg.run.seed,
        init_seed=STAGE_INIT_SEED,
        device=s.device or cfg.model.device,
        checkpoint_every=None,
        trainer_state=False,
    )


def train_one(ctx: StageContext, store: Any, mod: str, hook: str) -> dict[str, Any]:
    from vlmfast.sae import train_sae
    from vlmfast.sae.schedule import convergence_warnings

    sae_cfg = sae_config(ctx, hook)
    result = train_sae(
        store, sae_cfg, ctx.dir / mod, progress=ctx.progress, desc=f"train-sae {mod}"
    )
    (trained,) = result.saes
    metrics: dict[str, Any] = trained.last.to_json() if trained.last is not None else {}
    shown = {
        k: v
        for k, v in (metrics.get("metrics") or metrics).items()
        if isinstance(v, int | float) and not any(t in k for t in _TIMING_KEYS)
    }
    warnings = convergence_warnings(trained.fvu)
    memory = "in memory" if result.in_memory else "streamed"
    ctx.log(
        f"  {mod} SAE on {hook} ({result.n_rows:,} rows, rows={result.rows}, {memory}): "
        + "  ".join(f"{k}={v:.4g}" for k, v in shown.items())
    )
    for w in warnings:
        ctx.log(f"  warning: {w}")
    return {
        "hook": hook,
        "checkpoint": mod,
        "d_in": trained.sae.d_in,
        "n_latents": sae_cfg.n_latents[0],
        "k": sae_cfg.k[0],
        "rows": result.rows,
        "steps": result.steps,
        "batch_size": result.batch_size,
        "metrics": shown,
        "fvu_curve": trained.fvu,
        "warnings": warnings,
    }


def run(ctx: StageContext) -> dict[str, Any]:
    store = open_store(ctx)
    hooks = sae_hooks(ctx.config, ctx.pair())
    return {mod: train_one(ctx, store, mod, hook) for mod, hook in hooks.items()}
