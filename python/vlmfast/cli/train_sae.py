"""``vlmfast train-sae``: train top-k SAEs (one, or a sweep sharing batches) on a stored hook.

    vlmfast train-sae --store acts.zarr --hook image.blocks.8.resid_post --k 32 \\
        --n-latents 65536 --out saes/l8
    vlmfast train-sae --store acts.zarr --hook joint.embed --k 16 32 --n-latents 4096 --out sweep
    torchrun --nproc-per-node 2 -m vlmfast train-sae --store acts.zarr --hook ... --out ...

Defaults: batch 4096 rows (a small store: rows/64 rounded down to a power of two, >= 256);
training length max(one epoch, 5000 steps, 200 x n_latents rows), so a small store trains for
several epochs; a warning when the final FVU is above 0.1 (--fvu-warn) or still falling; a latent is
dead after max(batch, min(10M, tokens/20)) rows without firing; Adam with lr
2e-4/sqrt(n_latents/2^14), 5% warm-up, linear decay over the last 20%.
Writes ``OUT/cfg.json`` + ``sae_weights.safetensors`` (one SAE) or ``OUT/<name>/`` per SAE of a
sweep, training checkpoints (``trainer_state.pt``) and ``OUT/metrics.jsonl``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "train-sae",
        help="train top-k sparse autoencoders on a hook of an activation store",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--store", required=True, help="activation store directory")
    p.add_argument("--hook", required=True, help="hook name in the store, or joint.embed")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--k", type=int, nargs="+", default=[32], help="active latents (several: sweep)")
    p.add_argument("--n-latents", type=int, nargs="+", default=[65536], help="dictionary size(s)")
    p.add_argument(
        "--lr",
        type=float,
        nargs="+",
        default=[None],
        help="learning rate(s); default scales with n_latents",
    )
    p.add_argument(
        "--batch-size", type=int, default=None, help="rows per step (default: see above)"
    )
    p.add_argument(
        "--fvu-warn", type=float, default=0.1, help="warn when the final FVU is above this"
    )
    p.add_argument("--tokens", type=int, default=None, help="rows to train on (default: see above)")
    p.add_argument("--k-aux", type=int, default=None, help="AuxK latents (default d_in/2)")
    p.add_argument("--auxk-coef", type=float, default=1 / 32)
    p.add_argument(
        "--dead-tokens", type=int, default=None, help="rows without firing before a latent is dead"
    )
    p.add_argument(
        "--b-dec-init", default="geometric_median", choices=["geometric_median", "mean", "zeros"]
    )
    p.add_argument(
        "--input-scaling",
        action="store_true",
        help="scale inputs to unit mean squared norm (folded at save)",
    )
    p.add_argument(
        "--bf16", action="store_true", help="bfloat16 encoder GEMM (fp32 master weights)"
    )
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--warmup-steps", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--skip-nonfinite",
        action="store_true",
        help="drop NaN/Inf rows (counted) instead of failing",
    )
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--log-every", type=int, default=50, help="steps between metric lines")
    p.add_argument(
        "--checkpoint-every", type=int, default=1000, help="steps between training checkpoints"
    )
    p.add_argument("--resume", action="store_true", help="continue from the checkpoints in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _sweep_names(
    ks: list[int], widths: list[int], lrs: list[float | None]
) -> list[tuple[str, int, int, float | None]]:
    combos = list(itertools.product(ks, widths, lrs))
    out = []
    for k, n, lr in combos:
        name = f"k{k}_n{n}" + (f"_lr{lr:g}" if lr is not None else "")
        out.append((name, k, n, lr))
    return out


def _build_trainers(
    args: argparse.Namespace,
    store: Any,
    runs: list[tuple[str, int, int, float | None]],
    d_in: int,
    steps: int,
    dead_tokens: int,
    warmup: int,
    device: str,
) -> list[Any]:
    """One trainer per sweep point: resumed from ``--out`` or freshly initialised."""
    from vlmfast.sae import SAEConfig, SAETrainer, TopKSAE, TrainConfig
    from vlmfast.sae.checkpoint import resume_trainer

    out = Path(args.out)
    single = len(runs) == 1
    trainers: list[SAETrainer] = []
    for name, k, n, lr in runs:
        target = out if single else out / name
        if args.resume and (target / "trainer_state.pt").exists():
            trainer = resume_trainer(target, total_steps=steps, expect_d_in=d_in)
            trainer.name = name
        else:
            cfg = SAEConfig(
                d_in=d_in,
                n_latents=n,
                k=k,
                k_aux=args.k_aux,
                auxk_coef=args.auxk_coef,
                dead_tokens=dead_tokens,
                b_dec_init=args.b_dec_init,
                input_scaling=args.input_scaling,
                hook=args.hook,
                model=str(store.attrs.get("model", {}).get("spec", "")),
                seed=args.seed,
            )
            tcfg = TrainConfig(
                lr=lr,
                warmup_steps=warmup,
                grad_clip=args.grad_clip,
                autocast_bf16=args.bf16,
                nan_policy="skip" if args.skip_nonfinite else "error",
                seed=args.seed,
            )
            trainer = SAETrainer(
                TopKSAE.from_config(cfg).to(device), tcfg, total_steps=steps, name=name
            )
        trainers.append(trainer)
    return trainers


def _plan(
    args: argparse.Namespace, store: Any
) -> tuple[int, list[tuple[str, int, int, float | None]], int, int, int]:
    """Checks the arguments; returns d_in, the sweep points, steps, dead_tokens, warm-up."""
    from vlmfast.errors import InputError
    from vlmfast.sae.data import hook_rows, hook_width
    from vlmfast.sae.schedule import training_length

    d_in = hook_width(store, args.hook)
    n_rows = hook_rows(store, args.hook)
    if args.batch_size is not None and args.batch_size < 1:
        raise InputError(f"--batch-size must be >= 1, got {args.batch_size}")
    runs = _sweep_names(args.k, args.n_latents, args.lr)
    for name, k, n, _ in runs:
        if k > n:
            raise InputError(f"{name}: --k {k} exceeds --n-latents {n}")
    length = training_length(
        n_rows, max(args.n_latents), batch_size=args.batch_size, tokens=args.tokens
    )
    args.batch_size = length.batch_size
    steps = length.steps
    tokens = length.tokens
    dead_tokens = args.dead_tokens or max(args.batch_size, min(10_000_000, tokens // 20))
    warmup = args.warmup_steps if args.warmup_steps is not None else max(1, steps // 20)
    return d_in, runs, steps, dead_tokens, warmup


def run(args: argparse.Namespace) -> int:
    import torch

    from vlmfast.process_group import join_process_group, leave_process_group

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    rank, world = join_process_group(device)
    ok = False
    try:
        code = _train(args, device, rank, world)
        ok = True
        return code
    finally:
        leave_process_group(ok)


def _train(args: argparse.Namespace, device: str, rank: int, world: int) -> int:
    import torch
    from tqdm import tqdm

    from vlmfast.errors import InputError
    from vlmfast.sae import train
    from vlmfast.sae.checkpoint import save_training_checkpoint
    from vlmfast.sae.data import hook_rows, store_batches
    from vlmfast.store import ActivationStore

    store = ActivationStore.open(args.store)
    d_in, runs, steps, dead_tokens, warmup = _plan(args, store)
    out = Path(args.out)
    single = len(runs) == 1
    trainers = _build_trainers(args, store, runs, d_in, steps, dead_tokens, warmup, device)
    start = min(t.step_count for t in trainers)
    if any(t.step_count != start for t in trainers):
        raise InputError("--resume: the SAEs of this sweep stopped at different steps")
    torch.manual_seed(args.seed + rank)
    batches = store_batches(
        store,
        args.hook,
        args.batch_size,
        seed=args.seed,
        start_batch=start,
        rank=rank,
        world_size=world,
    )
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    metrics_file = (out / "metrics.jsonl").open("a") if rank == 0 else None
    bar = tqdm(
        total=steps,
        initial=start,
        unit="step",
        disable=args.no_progress or rank != 0,
        dynamic_ncols=True,
    )

    def save_all() -> None:
        if rank != 0:
            return
        for t in trainers:
            save_training_checkpoint(t, out if single else out / t.name)

    fvu_history: dict[str, list[float]] = {t.name: [] for t in trainers}

    def on_log(logs: list[Any]) -> None:
        for log in logs:
            fvu_history.setdefault(log.name, []).append(float(log.metrics["fvu"]))
        first = logs[0]
        bar.set_postfix(
            tok_s=f"{first.tokens_per_s:,.0f}",
            fvu=f"{first.metrics['fvu']:.4f}",
            l0=f"{first.metrics['l0']:.1f}",
            dead=f"{100 * first.last.dead_frac:.1f}%",
        )
        if metrics_file is not None:
            for log in logs:
                metrics_file.write(json.dumps(log.to_json()) + "\n")
            metrics_file.flush()

    def on_step(done: int) -> None:
        bar.update(1)
        if (start + done) % args.checkpoint_every == 0:
            save_all()

    nan_policy = "skip" if args.skip_nonfinite else "error"
    try:
        train(
            batches,
            trainers,
            max_steps=steps - start,
            nan_policy=nan_policy,
            log_every=args.log_every,
            on_log=on_log,
            on_step=on_step,
        )
        save_all()
    finally:
        batches.close()  # stops the store's prefetch threads before the process group goes
        bar.close()
        if metrics_file is not None:
            metrics_file.close()
    if rank == 0:
        where = out if single else ", ".join(str(out / t.name) for t in trainers)
        epochs = steps * args.batch_size / max(1, hook_rows(store, args.hook))
        print(
            f"trained {len(trainers)} SAE(s) for {steps} steps of {args.batch_size} rows "
            f"({epochs:.1f} epochs) -> {where}"
        )
        _warn_unconverged(fvu_history, args.fvu_warn)
    return 0


def _warn_unconverged(fvu_history: dict[str, list[float]], threshold: float) -> None:
    """Prints a warning per SAE whose final FVU is high or still falling."""
    from vlmfast.sae.schedule import convergence_warnings

    for name, history in fvu_history.items():
        for warning in convergence_warnings(history, threshold=threshold):
            print(f"warning: {name}: {warning}", file=sys.stderr)
