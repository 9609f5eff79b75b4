"""The one SAE training recipe over an activation store (:func:`train_sae`).

``vlmfast train-sae`` and the pipeline's ``train-sae`` stage both call it, so the same
store, hook, ``rows`` option, settings and seed train the same weights through either
front door, whether the store is held in memory or streamed (:mod:`vlmfast.sae.data`).

A run checks everything it can before it writes anything (the hook, the ``rows`` option,
the sweep, and that every part has at least one batch of rows), then writes its output
folder(s) marked ``INCOMPLETE`` (:mod:`vlmfast.sae.files`) until the final weights are
saved: a failed or interrupted run is never read back as a result, and ``resume``
continues it. Layout: ``OUT/`` (one SAE) or ``OUT/<name>/`` per SAE of a sweep
(``cfg.json``, ``sae_weights.safetensors``, ``trainer_state.pt``), and ``OUT/metrics.jsonl``.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch

from vlmfast.errors import InputError
from vlmfast.sae.checkpoint import resume_trainer, save_training_checkpoint
from vlmfast.sae.config import SAEConfig, TrainConfig, TrainSAEConfig
from vlmfast.sae.data import (
    BatchPlan,
    held_in_memory,
    hook_parts,
    hook_width,
    iterate_batches,
    plan_batches,
    window_rows,
)
from vlmfast.sae.files import TRAINER_STATE_FILE, mark_complete, mark_incomplete
from vlmfast.sae.model import TopKSAE
from vlmfast.sae.rows import check_rows, count_rows
from vlmfast.sae.schedule import TrainingLength, training_length
from vlmfast.sae.trainer import SAETrainer, TrainLog, train

SweepPoint = tuple[str, int, int, float | None]
"""``(name, k, n_latents, lr)`` of one SAE of a run."""


@dataclass
class TrainedSAE:
    """One SAE of a finished run."""

    name: str
    path: Path
    """Its folder (the run's ``out``, or ``out/<name>`` in a sweep)."""
    trainer: SAETrainer
    fvu: list[float] = field(default_factory=list)
    """The FVU of every logged window, in step order."""
    last: TrainLog | None = None
    """The last logged line."""

    @property
    def sae(self) -> TopKSAE:
        return self.trainer.sae


@dataclass
class TrainSAEResult:
    """What :func:`train_sae` did."""

    saes: list[TrainedSAE]
    steps: int
    batch_size: int
    n_rows: int
    """Rows the ``rows`` option selects (all ranks)."""
    rows: str
    in_memory: bool
    """Whether this rank held its rows in memory (else streamed them)."""

    @property
    def epochs(self) -> float:
        return self.steps * self.batch_size / max(1, self.n_rows)


@dataclass
class _Plan:
    d_in: int
    points: list[SweepPoint]
    length: TrainingLength
    batches: BatchPlan
    n_rows: int
    dead_tokens: int
    warmup: int


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


def plan_run(store: Any, cfg: TrainSAEConfig, *, rank: int = 0, world_size: int = 1) -> _Plan:
    """Checks ``cfg`` against the store and works out the defaults; writes nothing."""
    d_in = hook_width(store, cfg.hook)
    points = sweep_points(cfg)
    for part in hook_parts(store, cfg.hook):
        check_rows(store, part, cfg.rows)
    n_rows = selected_rows(store, cfg.hook, cfg.rows)
    if n_rows < 1:
        raise InputError(
            f"store {store.path}: hook {cfg.hook} has no rows with rows={cfg.rows!r}; "
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
        store, cfg.hook, length.batch_size, rows=cfg.rows, rank=rank, world_size=world_size
    )
    dead = cfg.dead_tokens or max(length.batch_size, min(10_000_000, length.tokens // 20))
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else max(1, length.steps // 20)
    return _Plan(d_in, points, length, batches, n_rows, dead, warmup)


def _model_spec(store: Any) -> str:
    from vlmfast.store.schema import ATTR_MODEL, MODEL_SPEC

    return str((store.attrs.get(ATTR_MODEL) or {}).get(MODEL_SPEC, ""))


def _new_trainer(
    store: Any, cfg: TrainSAEConfig, plan: _Plan, point: SweepPoint, device: str
) -> SAETrainer:
    name, k, n, lr = point
    sae_cfg = SAEConfig(
        d_in=plan.d_in,
        n_latents=n,
        k=k,
        k_aux=cfg.k_aux,
        auxk_coef=cfg.auxk_coef,
        dead_tokens=plan.dead_tokens,
        b_dec_init=cfg.b_dec_init,
        input_scaling=cfg.input_scaling,
        hook=cfg.hook,
        model=_model_spec(store),
        seed=cfg.seed if cfg.init_seed is None else cfg.init_seed,
        rows=cfg.rows,
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
    return SAETrainer(sae, train_cfg, total_steps=plan.length.steps, name=name)


def _targets(out: Path, plan: _Plan) -> list[Path]:
    single = len(plan.points) == 1
    return [out if single else out / name for name, *_ in plan.points]


def _build_trainers(
    store: Any, cfg: TrainSAEConfig, plan: _Plan, out: Path, device: str
) -> list[SAETrainer]:
    """One trainer per sweep point: resumed from ``out`` or freshly initialised."""
    trainers = []
    for point, target in zip(plan.points, _targets(out, plan)):
        if cfg.resume and (target / TRAINER_STATE_FILE).exists():
            trainer = resume_trainer(target, total_steps=plan.length.steps, expect_d_in=plan.d_in)
            trainer.name = point[0]
            was = trainer.sae.cfg.rows
            if was and was != cfg.rows:
                raise InputError(
                    f"--resume: {target} was trained on rows={was!r}, not rows={cfg.rows!r}"
                )
            trainer.sae.cfg.rows = cfg.rows
        else:
            trainer = _new_trainer(store, cfg, plan, point, device)
        trainers.append(trainer)
    start = trainers[0].step_count
    if any(t.step_count != start for t in trainers):
        raise InputError("--resume: the SAEs of this sweep stopped at different steps")
    return trainers


class _Outputs:
    """The run's folders (rank 0 only): marked incomplete until :meth:`finish`."""

    def __init__(self, out: Path, targets: list[Path], *, write: bool, resume: bool) -> None:
        self.out, self.targets, self.write = out, targets, write
        self.metrics: TextIO | None = None
        if write:
            for folder in {out, *targets}:
                mark_incomplete(folder)
            self.metrics = (out / "metrics.jsonl").open("a" if resume else "w")

    def log(self, logs: list[TrainLog]) -> None:
        if self.metrics is not None:
            for log in logs:
                self.metrics.write(json.dumps(log.to_json()) + "\n")
            self.metrics.flush()

    def save(self, trainers: list[SAETrainer], state: bool = True) -> None:
        if not self.write:
            return
        for trainer, target in zip(trainers, self.targets):
            if state:
                save_training_checkpoint(trainer, target)
            else:
                trainer.sae.save(target)

    def close(self) -> None:
        if self.metrics is not None:
            self.metrics.close()

    def finish(self) -> None:
        if self.write:
            for folder in {self.out, *self.targets}:
                mark_complete(folder)


def train_sae(
    store: Any,
    cfg: TrainSAEConfig,
    out: str | Path,
    *,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
    desc: str = "train-sae",
    on_log: Callable[[list[TrainLog]], None] | None = None,
) -> TrainSAEResult:
    """Trains the SAE(s) of ``cfg`` on ``store`` into ``out`` (see the module docstring).

    ``store`` is an open ``ActivationStore``. Under data parallelism (``world_size > 1``,
    ``torch.distributed`` initialised) every rank calls it and rank 0 writes.
    """
    plan = plan_run(store, cfg, rank=rank, world_size=world_size)
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(out)
    trainers = _build_trainers(store, cfg, plan, out, device)
    start = trainers[0].step_count
    torch.manual_seed(cfg.seed + rank)
    in_memory = held_in_memory(plan.batches)
    batches = iterate_batches(plan.batches, seed=cfg.seed, start_batch=start, in_memory=in_memory)
    outputs = _Outputs(out, _targets(out, plan), write=rank == 0, resume=cfg.resume)
    done = [TrainedSAE(t.name, p, t) for t, p in zip(trainers, outputs.targets)]
    try:
        _run(cfg, plan, trainers, batches, outputs, done, progress and rank == 0, desc, on_log)
        outputs.save(trainers, cfg.trainer_state)
    finally:
        batches.close()  # stops the reading thread before the process group goes
        outputs.close()
    outputs.finish()
    return TrainSAEResult(
        done, plan.length.steps, plan.length.batch_size, plan.n_rows, cfg.rows, in_memory
    )


def _run(
    cfg: TrainSAEConfig,
    plan: _Plan,
    trainers: list[SAETrainer],
    batches: Any,
    outputs: _Outputs,
    done: list[TrainedSAE],
    progress: bool,
    desc: str,
    on_log: Callable[[list[TrainLog]], None] | None,
) -> None:
    """The training loop with its progress bar, metric lines and checkpoints."""
    from tqdm import tqdm

    start = trainers[0].step_count
    steps = plan.length.steps
    bar = tqdm(total=steps, initial=start, unit="step", desc=desc, disable=not progress)
    by_name = {d.name: d for d in done}

    def logged(logs: list[TrainLog]) -> None:
        for log in logs:
            by_name[log.name].fvu.append(float(log.metrics["fvu"]))
            by_name[log.name].last = log
        first = logs[0]
        bar.set_postfix(
            tok_s=f"{first.tokens_per_s:,.0f}",
            fvu=f"{first.metrics['fvu']:.4f}",
            l0=f"{first.metrics['l0']:.1f}",
            dead=f"{100 * first.last.dead_frac:.1f}%",
        )
        outputs.log(logs)
        if on_log is not None:
            on_log(logs)

    def stepped(n_done: int) -> None:
        bar.update(1)
        every = cfg.checkpoint_every
        if every is not None and (start + n_done) % every == 0:
            outputs.save(trainers)

    try:
        logs = train(
            batches,
            trainers,
            max_steps=steps - start,
            nan_policy=cfg.nan_policy,
            log_every=cfg.log_every,
            on_log=logged,
            on_step=stepped,
        )
    finally:
        bar.close()
    for log in logs:  # a run shorter than log_every logs once, at its end
        if by_name[log.name].last is None:
            by_name[log.name].last = log
