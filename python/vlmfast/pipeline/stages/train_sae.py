"""Stage ``train-sae``: one SAE per modality hook, into ``RUN/train-sae/<modality>/``.

It trains through the library's one recipe (:func:`vlmfast.sae.train_sae`), the one
``vlmfast train-sae`` calls: the same token rows (``[sae] rows``, default ``tokens``: an
image hook's patch rows, its CLS row left out, and a text hook's token rows), the same
shuffling and batches whether the store is held in memory or streamed, the same
architecture options (``[sae] arch`` ...). ``[sae] hooks`` adds SAEs on more hooks, into
``RUN/train-sae/hooks/<hook>/``: each goes in the run of the modality hook of its tower
(the one pass reads each batch once for both when they hold the same rows), the rest in
one more run.
"""

from __future__ import annotations

from typing import Any

from vlmfast.pipeline.context import StageContext
from vlmfast.pipeline.stages._common import resolve_hook, sae_hooks

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


def sae_config(ctx: StageContext, hook: str | list[str]) -> Any:
    """The :class:`vlmfast.sae.TrainSAEConfig` of this run's SAE(s) on ``hook``."""
    from vlmfast.sae import TrainSAEConfig
    from vlmfast.sae.config import ENCODER_INIT_NORM

    cfg = ctx.config
    s = cfg.sae
    return TrainSAEConfig(
        hook=hook,
        k=[s.k],
        n_latents=[s.n_latents],
        lr=[s.lr],
        arch=s.arch,
        groups=s.groups,
        encoder_init_norm=(
            ENCODER_INIT_NORM if s.encoder_init_norm is None else s.encoder_init_norm
        ),
        threshold_ema=s.threshold_ema,
        threshold_init=s.threshold_init,
        bandwidth=s.bandwidth,
        l0_coef=s.l0_coef,
        l0_coef_adapt=s.l0_coef_adapt,
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


def _entry(ctx: StageContext, done: Any, trained: Any, checkpoint: str) -> dict[str, Any]:
    """The stage result of one SAE (``done``: its pass's result), logged."""
    from vlmfast.sae.schedule import convergence_warnings

    metrics: dict[str, Any] = trained.last.to_json() if trained.last is not None else {}
    shown = {
        k: v
        for k, v in (metrics.get("metrics") or metrics).items()
        if isinstance(v, int | float) and not any(t in k for t in _TIMING_KEYS)
    }
    warnings = convergence_warnings(trained.fvu)
    memory = "in memory" if done.in_memory else "streamed"
    cfg = trained.sae.cfg
    ctx.log(
        f"  {checkpoint} {cfg.arch} SAE on {trained.hook} ({done.n_rows:,} rows, "
        f"rows={done.rows}, {memory}): " + "  ".join(f"{k}={v:.4g}" for k, v in shown.items())
    )
    for w in warnings:
        ctx.log(f"  warning: {w}")
    return {
        "hook": trained.hook,
        "checkpoint": checkpoint,
        "arch": cfg.arch,
        "d_in": trained.sae.d_in,
        "n_latents": cfg.n_latents,
        "k": cfg.k,
        "rows": done.rows,
        "pass_hooks": done.hooks,
        "steps": done.steps,
        "batch_size": done.batch_size,
        "metrics": shown,
        "fvu_curve": trained.fvu,
        "warnings": warnings,
    }


def train_hooks(
    ctx: StageContext, store: Any, hooks: list[str], mod: str | None
) -> dict[str, dict[str, Any]]:
    """Trains SAEs on ``hooks`` in one run: the first into ``RUN/train-sae/<mod>/`` when
    ``mod`` is given, the others into ``RUN/train-sae/hooks/<hook>/``; their results by hook."""
    from vlmfast.sae import train_sae

    base = ctx.dir / (mod or "hooks")
    dirs = {h: ctx.dir / "hooks" / h for h in hooks}
    if mod is not None:
        dirs[hooks[0]] = base
    sae_cfg = sae_config(ctx, hooks[0] if len(hooks) == 1 else hooks)
    result = train_sae(
        store,
        sae_cfg,
        base,
        hook_dirs=dirs,
        progress=ctx.progress,
        desc=f"train-sae {mod or 'hooks'}",
    )
    out = {}
    for done in result.passes:
        for trained in done.saes:
            where = dirs[trained.hook].relative_to(ctx.dir).as_posix()
            out[trained.hook] = _entry(ctx, done, trained, where)
    return out


def run(ctx: StageContext) -> dict[str, Any]:
    store = open_store(ctx)
    pair = ctx.pair()
    hooks = sae_hooks(ctx.config, pair)
    extra = [resolve_hook(h, pair) for h in ctx.config.sae.hooks]
    out: dict[str, Any] = {}
    more: dict[str, Any] = {}
    for mod, hook in hooks.items():
        mine = [h for h in extra if h.split(".", 1)[0] == mod]
        trained = train_hooks(ctx, store, [hook, *mine], mod)
        out[mod] = trained.pop(hook)
        more.update(trained)
    rest = [h for h in extra if h not in more]
    if rest:
        more.update(train_hooks(ctx, store, rest, None))
    if more:
        out["hooks"] = more
    from vlmfast.pipeline.stages.sae_eval import evaluate_saes

    return evaluate_saes(ctx, store, out)
