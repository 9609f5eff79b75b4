"""Training of one or several top-k SAEs on the same stream of batches.

Each :class:`SAETrainer` owns one SAE, its Adam optimiser (fp32 master weights), its
learning-rate schedule and its dead-latent counters. :func:`train` feeds every trainer
the same batches (a sweep over k, width or lr costs one pass over the data).

Data-parallel: when ``torch.distributed`` is initialised, each rank passes its own rows;
the loss denominators, the gradients and the firing counts are summed over ranks, so N
ranks with batches of B rows take exactly the step one process takes on the N*B rows.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from vlmfast.errors import InputError, ShapeError
from vlmfast.sae import archs
from vlmfast.sae import distributed as ddp
from vlmfast.sae.config import TrainConfig
from vlmfast.sae.losses import auxk_loss, fvu_loss
from vlmfast.sae.metrics import RunningMetrics
from vlmfast.sae.model import ForwardOutput, TopKSAE


def clean_batch(x: torch.Tensor, policy: str = "error") -> tuple[torch.Tensor, int]:
    """Returns ``(rows without NaN/Inf, number dropped)``; ``policy='error'`` raises instead.

    Raises:
        ShapeError: ``x`` is not ``[N, d_in]``.
        InputError: ``policy='error'`` and some row has NaN/Inf (the rows named).
    """
    if x.ndim != 2:
        raise ShapeError(f"training batch must be [N, d_in], got {list(x.shape)}")
    finite = torch.isfinite(x).all(dim=1)
    if bool(finite.all()):
        return x, 0
    bad = (~finite).nonzero().flatten()
    if policy == "error":
        shown = ", ".join(str(int(i)) for i in bad[:10])
        more = f" (+{bad.numel() - 10} more)" if bad.numel() > 10 else ""
        raise InputError(
            f"training batch has NaN/Inf in {bad.numel()} of {x.shape[0]} rows: rows {shown}{more}"
            " (use nan_policy='skip' / --skip-nonfinite to drop them)"
        )
    return x[finite], int(bad.numel())


def _schedule(step: int, total_steps: int, cfg: TrainConfig) -> float:
    """Learning-rate multiplier: linear warm-up, flat, then linear decay to 0."""
    warm = max(1, cfg.warmup_steps)
    factor = min(1.0, (step + 1) / warm)
    decay_from = int(cfg.decay_start * total_steps)
    if cfg.decay_start < 1.0 and step >= decay_from and total_steps > decay_from:
        factor *= max(0.0, (total_steps - step) / (total_steps - decay_from))
    return factor


def _global_total_variance(x: torch.Tensor) -> torch.Tensor:
    """``sum ||x_n - mu||^2`` over all ranks' rows with the global per-dimension mean (float64)."""
    x64 = x.detach().double()
    stats = torch.cat([x64.sum(0), x64.pow(2).sum(0), x64.new_tensor([x.shape[0]])])
    ddp.all_reduce_sum_(stats)
    d = x.shape[1]
    n = stats[-1].clamp_min(1.0)
    mu = stats[:d] / n
    return (stats[d : 2 * d] - n * mu.pow(2)).sum().clamp_min(1e-12)


LOSS_TERMS = ("fvu", "auxk", "prefix_fvu", "l0_loss")
"""The terms of the training objective, as :class:`StepResult` fields."""


@dataclass
class StepResult:
    """Scalars of one optimisation step of one SAE (losses summed over data-parallel ranks)."""

    loss: float
    """The objective the step minimised: ``fvu + auxk_coef * auxk + prefix_fvu + l0_loss``."""
    fvu: float
    """Fraction of variance unexplained by the full reconstruction."""
    auxk: float
    """AuxK loss before its weight ``SAEConfig.auxk_coef`` (0 when no latent is dead)."""
    l0: float
    """Mean active latents per row."""
    dead_frac: float
    """Fraction of latents dead after the step."""
    lr: float
    """Learning rate of the step."""
    grad_norm: float
    """Global gradient norm before clipping."""
    prefix_fvu: float = 0.0
    """Matryoshka: summed FVU of every prefix but the full one (0 for other archs)."""
    l0_loss: float = 0.0
    """JumpReLU: the weighted L0 penalty ``l0_weight * L0 / k`` (0 for other archs)."""


class SAETrainer:
    """Optimises one :class:`TopKSAE` of any ``cfg.arch`` (:mod:`vlmfast.sae.archs`
    dispatches the forward, the extra losses and the after-step updates); see the module
    docstring for the maths of a step.

    Raises:
        InputError: (constructing) ``total_steps < 1``.
    """

    def __init__(
        self,
        sae: TopKSAE,
        cfg: TrainConfig | None = None,
        *,
        total_steps: int,
        name: str = "sae",
    ) -> None:
        if total_steps < 1:
            raise InputError(f"total_steps must be >= 1, got {total_steps}")
        self.sae = sae
        self.cfg = cfg or TrainConfig()
        self.total_steps = total_steps
        self.name = name
        self.base_lr = self.cfg.learning_rate(sae.n_latents)
        device = sae.W_dec.device
        fused = device.type in ("cuda", "cpu")
        self.optimizer = torch.optim.Adam(
            sae.parameters(), lr=self.base_lr, betas=self.cfg.betas, eps=self.cfg.eps, fused=fused
        )
        self.step_count = 0
        self.tokens_seen = 0
        self.tokens_since_fired = torch.zeros(sae.n_latents, dtype=torch.int64, device=device)
        self.metrics = RunningMetrics(sae.d_in, sae.n_latents)

    # ------------------------------------------------------------------ state
    def dead_mask(self) -> torch.Tensor:
        """Returns the bool ``[n_latents]`` mask of latents silent for ``dead_tokens`` tokens."""
        return self.tokens_since_fired >= self.sae.cfg.dead_tokens

    def current_lr(self) -> float:
        """Returns the learning rate of the next step (after warm-up and decay)."""
        return self.base_lr * _schedule(self.step_count, self.total_steps, self.cfg)

    def state_dict(self) -> dict[str, Any]:
        """Returns everything an exact resume needs (optimiser, counters, RNG, biases)."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "step": self.step_count,
            "tokens": self.tokens_seen,
            "total_steps": self.total_steps,
            "tokens_since_fired": self.tokens_since_fired.cpu(),
            "train_cfg": self.cfg.to_dict(),
            "b_enc_raw": self.sae.b_enc.detach().cpu().clone(),
            "b_dec_raw": self.sae.b_dec.detach().cpu().clone(),
            "input_scale": float(self.sae.input_scale),
            "b_dec_initialised": self.sae.b_dec_initialised,
            "rng": torch.get_rng_state(),
            "arch_state": archs.arch_state(self.sae),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores :meth:`state_dict`'s ``state`` (exact resume).

        Raises:
            ShapeError: the checkpoint has another number of latents.
        """
        self.optimizer.load_state_dict(state["optimizer"])
        self.step_count = int(state["step"])
        self.tokens_seen = int(state["tokens"])
        self.total_steps = max(self.total_steps, int(state.get("total_steps", self.total_steps)))
        tsf = state["tokens_since_fired"]
        if tsf.shape != self.tokens_since_fired.shape:
            raise ShapeError(
                f"resume: checkpoint has {tsf.shape[0]} latents, this SAE {self.sae.n_latents}"
            )
        self.tokens_since_fired.copy_(tsf)
        with torch.no_grad():
            self.sae.b_enc.copy_(state["b_enc_raw"])
            self.sae.b_dec.copy_(state["b_dec_raw"])
            self.sae.input_scale.fill_(float(state["input_scale"]))
        self.sae.b_dec_initialised = bool(state["b_dec_initialised"])
        archs.load_arch_state(self.sae, state.get("arch_state", {}))
        torch.set_rng_state(state["rng"])

    # ------------------------------------------------------------------- step
    def step(self, x: torch.Tensor) -> StepResult:
        """Runs one optimisation step on ``x [N, d_in]`` (already free of NaN/Inf).

        Returns:
            The step's losses (summed over data-parallel ranks), L0 (latents per row),
                gradient norm and learning rate, as a :class:`StepResult`.

        Raises:
            ShapeError: ``x`` is not ``[N, d_in]``.
            InputError: the loss became NaN or infinite.
        """
        sae = self.sae
        if x.ndim != 2 or x.shape[1] != sae.d_in:
            raise ShapeError(
                f"SAE '{self.name}' has d_in={sae.d_in} but the batch is {list(x.shape)}"
            )
        x = x.to(device=sae.W_dec.device, dtype=sae.W_dec.dtype)
        if not sae.b_dec_initialised:
            sae.init_from_batch(ddp.all_gather_rows(x))
        scale = float(sae.input_scale)
        xs = x * scale if scale != 1.0 else x
        dead = self.dead_mask()
        use_aux = sae.cfg.auxk_coef > 0 and bool(dead.any())
        compute_dtype = torch.bfloat16 if self.cfg.autocast_bf16 else None
        out = archs.forward_train(sae, xs, dead if use_aux else None, compute_dtype=compute_dtype)
        loss, terms = self._loss(xs, out)
        grad_norm, lr = self._optimise(loss)
        archs.after_step(sae, out)
        n_tokens, l0 = self._track_firing(xs, out, scale)
        self.step_count += 1
        self.tokens_seen += n_tokens
        if not math.isfinite(float(loss.detach())):
            raise InputError(
                f"SAE '{self.name}': loss became {float(loss.detach())} at step {self.step_count}"
            )
        # each term is this rank's share of the objective; the ranks' sum is what the
        # summed gradients minimise
        stats = torch.tensor([terms.get(t, 0.0) for t in LOSS_TERMS], dtype=torch.float64)
        ddp.all_reduce_sum_(stats)
        summed = dict(zip(LOSS_TERMS, stats.tolist(), strict=True))
        total = summed["fvu"] + sae.cfg.auxk_coef * summed["auxk"]
        total += summed["prefix_fvu"] + summed["l0_loss"]
        return StepResult(
            loss=total,
            **summed,
            l0=l0,
            dead_frac=float(self.dead_mask().double().mean()),
            lr=lr,
            grad_norm=grad_norm,
        )

    def _loss(self, xs: torch.Tensor, out: ForwardOutput) -> tuple[torch.Tensor, dict[str, float]]:
        """``(objective, its terms by name)``: FVU, the weighted AuxK (if any) and the
        architecture's extra terms (:func:`vlmfast.sae.archs.extra_loss`); the terms are
        this rank's shares, ``auxk`` before its weight."""
        total_var = _global_total_variance(xs)
        fvu = fvu_loss(xs, out.recon, total_var)
        loss = fvu
        extra, terms = archs.extra_loss(self.sae, xs, out, lambda x, r: fvu_loss(x, r, total_var))
        if extra is not None:
            loss = loss + extra
        terms["fvu"] = float(fvu.detach())
        if out.aux_recon is not None:
            residual = (xs - out.recon).detach()
            aux = auxk_loss(residual, out.aux_recon, _global_total_variance(residual))
            loss = loss + self.sae.cfg.auxk_coef * aux
            terms["auxk"] = float(aux.detach())
        return loss, terms

    def _optimise(self, loss: torch.Tensor) -> tuple[float, float]:
        """Backward, all-reduce, clip, Adam step, renormalise; returns ``(grad norm, lr)``."""
        sae = self.sae
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grads = [p.grad for p in sae.parameters() if p.grad is not None]
        if ddp.is_distributed():
            for g in grads:
                ddp.all_reduce_sum_(g)
        sae.remove_parallel_grads_()
        total_norm = torch.nn.utils.get_total_norm(grads)
        clip = self.cfg.grad_clip
        # clip_grad_norm_'s coefficient; below the limit it is 1 and its multiply a no-op
        # pass over every gradient, so the gradients are rescaled only above it
        if clip is not None and bool(clip / (total_norm + 1e-6) < 1.0):
            params = [p for p in sae.parameters() if p.grad is not None]
            torch.nn.utils.clip_grads_with_norm_(params, clip, total_norm)
        grad_norm = float(total_norm)
        lr = self.current_lr()
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        sae.normalize_decoder_()
        return grad_norm, lr

    @torch.no_grad()
    def _track_firing(
        self, xs: torch.Tensor, out: ForwardOutput, scale: float
    ) -> tuple[int, float]:
        """Updates the dead-latent counters and the metrics; returns ``(global rows, L0)``."""
        sae = self.sae
        active = out.values > 0
        fired = torch.bincount(out.indices[active], minlength=sae.n_latents)
        n_tokens = torch.tensor([xs.shape[0]], device=fired.device)
        ddp.all_reduce_sum_(fired)
        ddp.all_reduce_sum_(n_tokens)
        self.tokens_since_fired += n_tokens
        self.tokens_since_fired[fired > 0] = 0
        self.metrics.update(xs / scale, out.recon / scale, out.values, out.indices)
        l0 = float(active.sum()) / max(1, xs.shape[0])
        return int(n_tokens), l0


@dataclass
class TrainLog:
    """One logged line of a run (one per trainer per log interval)."""

    name: str
    step: int
    tokens: int
    tokens_per_s: float
    metrics: dict[str, float]
    last: StepResult
    skipped_rows: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Returns the line as a flat JSON-ready dict (window metrics prefixed ``window_``)."""
        return {
            "sae": self.name,
            "step": self.step,
            "tokens": self.tokens,
            "tokens_per_s": self.tokens_per_s,
            **{f"window_{k}": v for k, v in self.metrics.items()},
            **{k: getattr(self.last, k) for k in self.last.__dataclass_fields__},
            "skipped_rows": self.skipped_rows,
            **self.extra,
        }


def train(
    batches: Iterable[torch.Tensor],
    trainers: list[SAETrainer],
    *,
    max_steps: int | None = None,
    nan_policy: str = "error",
    log_every: int = 50,
    on_log: Callable[[list[TrainLog]], None] | None = None,
    on_step: Callable[[int], None] | None = None,
) -> list[TrainLog]:
    """Feeds every batch to every trainer; returns the last log lines.

    Stops after ``max_steps`` batches (default: the trainers' ``total_steps`` minus the
    steps they already took) or when ``batches`` ends. NaN/Inf rows follow ``nan_policy``.

    Returns:
        The last log line of every trainer (FVU, L0 in latents per row, tokens per
            second), one :class:`TrainLog` each.

    Raises:
        InputError: no trainers, or NaN/Inf rows under ``nan_policy='error'``.
        ShapeError: a batch is not ``[N, d_in]``.
    """
    if not trainers:
        raise InputError("train: no SAEs to train")
    remaining = max_steps
    if remaining is None:
        remaining = max(t.total_steps - t.step_count for t in trainers)
    skipped = 0
    logs: list[TrainLog] = []
    started = time.perf_counter()
    tokens_at_start = trainers[0].tokens_seen
    iterator: Iterator[torch.Tensor] = iter(batches)
    done = 0
    while done < remaining:
        try:
            batch = next(iterator)
        except StopIteration:
            break
        batch, dropped = clean_batch(batch, nan_policy)
        skipped += dropped
        if batch.shape[0] == 0:
            continue
        results = [t.step(batch) for t in trainers]
        done += 1
        if on_step is not None:
            on_step(done)
        if done % log_every == 0 or done == remaining:
            elapsed = max(1e-9, time.perf_counter() - started)
            rate = (trainers[0].tokens_seen - tokens_at_start) / elapsed
            for t in trainers:
                t.metrics.all_reduce_()
            logs = [
                TrainLog(t.name, t.step_count, t.tokens_seen, rate, t.metrics.summary(), r, skipped)
                for t, r in zip(trainers, results)
            ]
            for t in trainers:
                t.metrics.reset()
            if on_log is not None:
                on_log(logs)
    if not logs and done:
        elapsed = max(1e-9, time.perf_counter() - started)
        rate = (trainers[0].tokens_seen - tokens_at_start) / elapsed
        logs = [
            TrainLog(t.name, t.step_count, t.tokens_seen, rate, t.metrics.summary(), r, skipped)
            for t, r in zip(trainers, results)
        ]
    return logs
