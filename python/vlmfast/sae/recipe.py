"""The one SAE training recipe over an activation store (:func:`train_sae`).

``vlmfast train-sae`` and the pipeline's ``train-sae`` stage both call it, so the same
store, hook, ``rows`` option, settings and seed train the same weights through either
front door, whether the store is held in memory or streamed (:mod:`vlmfast.sae.data`).

A run checks everything it can before it writes anything (the hook, the ``rows`` option,
the sweep, and that every part has at least one batch of rows), then writes its output
folder(s) marked ``INCOMPLETE`` (:mod:`vlmfast.sae.files`) until the final weights are
saved: a failed or interrupted run is never read back as a result, and ``resume``
continues it. Layout: ``OUT/`` (one SAE) or ``OUT/<name>/`` per SAE of a sweep
(``cfg.json``, ``sae_weights.safetensors``, ``trainer_state.pt``), and ``OUT/metrics.jsonl``;
with several hooks, ``OUT/<hook>/`` per hook (:mod:`vlmfast.sae.passes`: the hooks that
hold the same rows share one pass over the store, each batch's rows read once for all).
The architecture (``arch``) and its options go into every SAE's config (``cfg.json``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from vlmfast.errors import InputError
from vlmfast.sae.arch_options import arch_fields
from vlmfast.sae.checkpoint import resume_trainer
from vlmfast.sae.config import SAEConfig, TrainConfig, TrainSAEConfig
from vlmfast.sae.data import hook_parts, hook_width, plan_batches, window_rows
from vlmfast.sae.files import TRAINER_STATE_FILE
from vlmfast.sae.model import TopKSAE
from vlmfast.sae.one_pass import PassPlan, SweepPoint, TrainedSAE, TrainPass, TrainSAEResult
from vlmfast.sae.passes import RunOutputs, hook_folders, hook_passes, sae_name
from vlmfast.sae.rows import check_rows, count_rows
from vlmfast.sae.schedule import TrainingLength, training_length
from vlmfast.sae.trainer import SAETrainer, TrainLog

__all__ = ["TrainSAEResult", "TrainedSAE", "plan_run", "sae_config", "train_sae"]


def sweep_points(cfg: TrainSAEConfig) -> list[SweepPoint]:
    """Every ``(k, n_latents, lr)`` combination, named ``k32_n65536[_lr0.001]``."""
    points = []
    for k, n, lr in itertools.product(cfg.k, cfg.n_latents, cfg.lr):
        name = f"k{k}_n{n}" + (f"_lr{lr:g}" if lr is not None else "")
        if k > n:
            raise InputError(f"{name}: --k {k} exceeds --n-latents {n}")
        points.append((name, k, n, lr))
    return points


def selected_rows(store: Any, hook: str, rows: str) -> int:
    """How many rows of ``hook`` the ``rows`` option selects (every rank's)."""
    total = 0
    for part in hook_parts(store, hook):
        n = int(store.n_rows(part))
        total += sum(count_rows(store, part, rows, 0, n, window_rows(store.width(part))))
    return total


def plan_run(
    store: Any,
    cfg: TrainSAEConfig,
    *,
    hooks: list[str] | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> PassPlan:
    """Checks ``cfg`` against the store and works out the defaults of one pass over the
    rows of ``hooks`` (default: every hook of ``cfg``; they must hold the same rows);
    writes nothing. Raises ``InputError`` / ``HookNameError`` naming the bad hook."""
    hooks = cfg.hooks if hooks is None else hooks
    widths = [hook_width(store, h) for h in hooks]
    points = sweep_points(cfg)
    for hook in hooks:
        for part in hook_parts(store, hook):
            check_rows(store, part, cfg.rows)
    n_rows = selected_rows(store, hooks[0], cfg.rows)
    if n_rows < 1:
        raise InputError(
            f"store {store.path}: hook {hooks[0]} has no rows with rows={cfg.rows!r}; "
            "pick other --rows"
        )
    length = training_length(
        n_rows, max(cfg.n_latents), batch_size=cfg.batch_size, tokens=cfg.tokens
    )
    if cfg.steps is not None:
        length = TrainingLength(
            length.batch_size, cfg.steps, cfg.steps * length.batch_size / n_rows
        )
    batches = plan_batches(
        store, hooks, length.batch_size, rows=cfg.rows, rank=rank, world_size=world_size
    )
    dead = cfg.dead_tokens or max(length.batch_size, min(10_000_000, length.tokens // 20))
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else max(1, length.steps // 20)
    return PassPlan(hooks, widths, points, length, batches, n_rows, dead, warmup)


def _model_spec(store: Any) -> str:
    from vlmfast.store.schema import ATTR_MODEL, MODEL_SPEC

    return str((store.attrs.get(ATTR_MODEL) or {}).get(MODEL_SPEC, ""))


def sae_config(
    cfg: TrainSAEConfig, hook: str, d_in: int, k: int, n_latents: int, **fields: Any
) -> SAEConfig:
    """The :class:`SAEConfig` the recipe builds for ``hook`` (``fields``: the run's
    ``dead_tokens`` and ``model``): the run's architecture and its options included."""
    return SAEConfig(
        d_in=d_in,
        n_latents=n_latents,
        k=k,
        k_aux=cfg.k_aux,
        auxk_coef=cfg.auxk_coef,
        b_dec_init=cfg.b_dec_init,
        input_scaling=cfg.input_scaling,
        encoder_init_norm=cfg.encoder_init_norm,
        hook=hook,
        seed=cfg.seed if cfg.init_seed is None else cfg.init_seed,
        rows=cfg.rows,
        arch=cfg.arch,
        **arch_fields(cfg),
        **fields,
    )


def _new_trainer(
    store: Any, cfg: TrainSAEConfig, plan: PassPlan, hook: str, point: SweepPoint, device: str
) -> SAETrainer:
    _, k, n, lr = point
    d_in = plan.widths[plan.hooks.index(hook)]
    sae_cfg = sae_config(
        cfg, hook, d_in, k, n, dead_tokens=plan.dead_tokens, model=_model_spec(store)
    )
    train_cfg = TrainConfig(
        lr=lr,
        warmup_steps=plan.warmup,
        grad_clip=cfg.grad_clip,
        autocast_bf16=cfg.autocast_bf16,
        nan_policy=cfg.nan_policy,
        seed=cfg.seed,
    )
    sae = TopKSAE.from_config(sae_cfg).to(device)
    return SAETrainer(sae, train_cfg, total_steps=plan.length.steps)


def _resumed(cfg: TrainSAEConfig, plan: PassPlan, hook: str, target: Path) -> SAETrainer:
    d_in = plan.widths[plan.hooks.index(hook)]
    trainer = resume_trainer(target, total_steps=plan.length.steps, expect_d_in=d_in)
    was = trainer.sae.cfg.rows
    if was and was != cfg.rows:
        raise InputError(f"--resume: {target} was trained on rows={was!r}, not rows={cfg.rows!r}")
    arch = getattr(trainer.sae.cfg, "arch", "topk")
    if arch != cfg.arch:
        raise InputError(f"--resume: {target} is a {arch!r} SAE, not arch={cfg.arch!r}")
    trainer.sae.cfg.rows = cfg.rows
    return trainer


def _build_trainers(
    store: Any, cfg: TrainSAEConfig, plan: PassPlan, folders: Mapping[str, Path], device: str
) -> list[SAETrainer]:
    """One trainer per hook and sweep point: resumed from its folder or freshly made."""
    trainers = []
    for hook, point, target in plan.targets(folders):
        if cfg.resume and (target / TRAINER_STATE_FILE).exists():
            trainer = _resumed(cfg, plan, hook, target)
        else:
            trainer = _new_trainer(store, cfg, plan, hook, point, device)
        trainer.name = sae_name(
            hook, point[0], several_hooks=len(cfg.hooks) > 1, several_points=len(plan.points) > 1
        )
        trainers.append(trainer)
    start = trainers[0].step_count
    if any(t.step_count != start for t in trainers):
        raise InputError(
            f"--resume: the SAEs of {', '.join(plan.hooks)} stopped at different steps"
        )
    return trainers


def train_sae(
    store: Any,
    cfg: TrainSAEConfig,
    out: str | Path,
    *,
    hook_dirs: Mapping[str, str | Path] | None = None,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
    desc: str = "train-sae",
    on_log: Callable[[list[TrainLog]], None] | None = None,
) -> TrainSAEResult:
    """Trains the SAE(s) of ``cfg`` on ``store`` into ``out`` (see the module docstring).

    ``store`` is an open ``ActivationStore``. ``hook_dirs`` names the folder of some hooks
    (default ``out/<hook>`` with several hooks). Under data parallelism (``world_size > 1``,
    ``torch.distributed`` initialised) every rank calls it and rank 0 writes. Everything is
    checked (every pass planned, every resumed checkpoint read) before anything is written.

    Returns:
        One trained SAE per (hook, sweep point) with its folder and final metrics, as a
            :class:`TrainSAEResult`.

    Raises:
        InputError: a config the store cannot serve (hook, rows, ``k > n_latents``, too
            few rows) or a ``--resume`` checkpoint of another run.
    """
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(out)
    folders = hook_folders(out, cfg.hooks, hook_dirs)
    passes = [
        plan_run(store, cfg, hooks=hooks, rank=rank, world_size=world_size)
        for hooks in hook_passes(store, cfg.hooks)
    ]
    built = [_build_trainers(store, cfg, plan, folders, device) for plan in passes]
    targets = [[t for *_, t in plan.targets(folders)] for plan in passes]
    outputs = RunOutputs(out, [t for ts in targets for t in ts], write=rank == 0, resume=cfg.resume)
    results = []
    try:
        for plan, trainers, paths in zip(passes, built, targets):
            run = TrainPass(cfg, plan, trainers, paths, outputs)
            results.append(run.train(rank, progress and rank == 0, desc, on_log))
    finally:
        outputs.close()
    outputs.finish()
    first = results[0]
    saes = [s for r in results for s in r.saes]
    return TrainSAEResult(
        saes, first.steps, first.batch_size, first.n_rows, cfg.rows, first.in_memory,
        cfg.hooks, results,
    )  # fmt: skip
