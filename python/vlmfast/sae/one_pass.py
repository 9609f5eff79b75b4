"""One pass of :func:`vlmfast.sae.train_sae` over the store: its plan, its training loop
(progress bar, metric lines, checkpoints) and what it returns."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vlmfast.sae.config import TrainSAEConfig
from vlmfast.sae.data import BatchPlan, held_in_memory, iterate_batches
from vlmfast.sae.model import TopKSAE
from vlmfast.sae.passes import RunOutputs, column_feeds
from vlmfast.sae.schedule import TrainingLength
from vlmfast.sae.trainer import SAETrainer, TrainLog, train

SweepPoint = tuple[str, int, int, float | None]
"""``(name, k, n_latents, lr)`` of one SAE of a run."""


@dataclass
class TrainedSAE:
    """One SAE of a finished run."""

    name: str
    path: Path
    """Its folder (the run's ``out``, ``out/<name>`` in a sweep, ``out/<hook>[/<name>]``
    with several hooks)."""
    trainer: SAETrainer
    fvu: list[float] = field(default_factory=list)
    """The FVU of every logged window, in step order."""
    last: TrainLog | None = None
    """The last logged line."""
    hook: str = ""
    """The hook it was trained on."""

    @property
    def sae(self) -> TopKSAE:
        return self.trainer.sae


@dataclass
class TrainSAEResult:
    """What :func:`train_sae` did (with several passes: the first pass's figures, every
    pass in ``passes``)."""

    saes: list[TrainedSAE]
    steps: int
    batch_size: int
    n_rows: int
    """Rows the ``rows`` option selects (all ranks)."""
    rows: str
    in_memory: bool
    """Whether this rank held its rows in memory (else streamed them)."""
    hooks: list[str] = field(default_factory=list)
    """The hooks trained (of this pass, in a ``passes`` entry)."""
    passes: list[TrainSAEResult] = field(default_factory=list)
    """One result per pass over the store (hooks that hold the same rows share one)."""

    @property
    def epochs(self) -> float:
        return self.steps * self.batch_size / max(1, self.n_rows)


@dataclass
class PassPlan:
    """One pass over the store, worked out before anything is written."""

    hooks: list[str]
    widths: list[int]
    points: list[SweepPoint]
    length: TrainingLength
    batches: BatchPlan
    n_rows: int
    dead_tokens: int
    warmup: int

    def targets(self, folders: Mapping[str, Path]) -> list[tuple[str, SweepPoint, Path]]:
        """``(hook, point, folder)`` of every SAE of the pass, hook by hook."""
        single = len(self.points) == 1
        return [
            (hook, point, folders[hook] if single else folders[hook] / point[0])
            for hook in self.hooks
            for point in self.points
        ]


@dataclass
class TrainPass:
    """One pass over the store: the SAEs of hooks that hold the same rows."""

    cfg: TrainSAEConfig
    plan: PassPlan
    trainers: list[SAETrainer]
    targets: list[Path]
    outputs: RunOutputs

    def train(
        self,
        rank: int,
        progress: bool,
        desc: str,
        on_log: Callable[[list[TrainLog]], None] | None,
    ) -> TrainSAEResult:
        """Trains and saves the pass's SAEs; returns what it did."""
        cfg, plan = self.cfg, self.plan
        start = self.trainers[0].step_count
        torch.manual_seed(cfg.seed + rank)
        in_memory = held_in_memory(plan.batches)
        batches = iterate_batches(
            plan.batches, seed=cfg.seed, start_batch=start, in_memory=in_memory
        )
        hooks = [h for h in plan.hooks for _ in plan.points]
        done = [
            TrainedSAE(t.name, p, t, [], None, h)
            for t, p, h in zip(self.trainers, self.targets, hooks)
        ]
        try:
            _run(self, batches, done, progress, desc, on_log)
            self.outputs.save(self.trainers, self.targets, cfg.trainer_state)
        finally:
            batches.close()  # stops the reading thread before the process group goes
        length = plan.length
        return TrainSAEResult(
            done, length.steps, length.batch_size, plan.n_rows, cfg.rows, in_memory, plan.hooks
        )


def _run(
    run: TrainPass,
    batches: Any,
    done: list[TrainedSAE],
    progress: bool,
    desc: str,
    on_log: Callable[[list[TrainLog]], None] | None,
) -> None:
    """The training loop with its progress bar, metric lines and checkpoints."""
    from tqdm import tqdm

    cfg, trainers = run.cfg, run.trainers
    start = trainers[0].step_count
    steps = run.plan.length.steps
    if len(run.plan.hooks) > 1:
        desc = f"{desc} ({len(run.plan.hooks)} hooks)"
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
        run.outputs.log(logs)
        if on_log is not None:
            on_log(logs)

    def stepped(n_done: int) -> None:
        bar.update(1)
        every = cfg.checkpoint_every
        if every is not None and (start + n_done) % every == 0:
            run.outputs.save(trainers, run.targets)

    per_hook = len(run.plan.points)
    try:
        logs = train(
            batches,
            column_feeds(trainers, run.plan.widths, per_hook),
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
