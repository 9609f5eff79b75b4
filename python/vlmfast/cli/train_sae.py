"""``vlmfast train-sae``: train top-k SAEs (one, or a sweep sharing batches) on a stored hook.

    vlmfast train-sae --store acts.zarr --hook image.blocks.8.resid_post --k 32 \\
        --n-latents 65536 --out saes/l8
    vlmfast train-sae --store acts.zarr --hook joint.embed --k 16 32 --n-latents 4096 --out sweep
    vlmfast train-sae --store acts.zarr --hook image.blocks.4.resid_post,image.blocks.8.resid_post \
        --arch matryoshka --groups 1024 1024 2048 --k 32 --n-latents 4096 --out layers
    torchrun --nproc-per-node 2 -m vlmfast train-sae --store acts.zarr --hook ... --out ...

Rows (--rows): tokens (the default) trains on the hook's token rows with an image hook's
CLS row left out (patch rows; a text hook's every token); all keeps every stored row (CLS
included: what this command trained on before --rows existed); patches, cls and eot pick
image patch rows, image CLS rows or text EOT rows only. The pipeline's [sae] rows has the
same default, and `vlmfast run` trains through the same recipe (vlmfast.sae.train_sae).
Defaults: batch 4096 rows (a small store: rows/64 rounded down to a power of two, >= 256);
training length max(one epoch, 5000 steps, 200 x n_latents rows), so a small store trains for
several epochs; a warning when the final FVU is above 0.1 (--fvu-warn) or still falling; a latent is
dead after max(batch, min(10M, tokens/20)) rows without firing; Adam with lr
2e-4/sqrt(n_latents/2^14), 5% warm-up, linear decay over the last 20%.
Architectures (--arch): topk (the default: per-row top-k with AuxK), batchtopk, matryoshka
(--groups: nested group sizes summing to --n-latents) and jumprelu (--threshold-init,
--bandwidth, --l0-coef, --l0-coef-adapt); recorded in cfg.json. Several hooks (--hook
repeated or a comma list): one SAE per hook, into OUT/<hook>/; hooks that hold the same
rows (one tower, same row count) train in one pass that reads each batch's rows once for
all of them, the others in separate passes (vlmfast.sae.passes).
Writes ``OUT/cfg.json`` + ``sae_weights.safetensors`` (one SAE) or ``OUT/<name>/`` per SAE of a
sweep, training checkpoints (``trainer_state.pt``) and ``OUT/metrics.jsonl``; until the run
finishes its folders hold an ``INCOMPLETE`` marker (readers refuse them; --resume continues).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from vlmfast.cli.args import (
    add_out_arg,
    add_progress_arg,
    add_seed_arg,
    device,
    existing_dir,
    hook_list,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
)
from vlmfast.sae.config import ARCHS, ENCODER_INIT_NORM
from vlmfast.sae.rows import DEFAULT_ROWS, ROWS, ROWS_HELP


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "train-sae",
        help="train top-k sparse autoencoders on a hook of an activation store",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--store", required=True, type=existing_dir("an activation store"), help="store folder"
    )
    p.add_argument(
        "--hook",
        required=True,
        type=hook_list,
        action="extend",
        help="hook name in the store, or joint.embed; several: repeat it or a comma list",
    )
    add_out_arg(p)
    p.add_argument("--rows", choices=ROWS, default=DEFAULT_ROWS, help=ROWS_HELP)
    _add_sae_args(p)
    _add_arch_args(p)
    _add_run_args(p)
    # a failed run keeps its checkpoints (marked INCOMPLETE) for --resume: main() must not
    # remove the folder; a run that fails its checks writes nothing in the first place
    p.set_defaults(func=run, resumable=True)


def _add_sae_args(p: argparse.ArgumentParser) -> None:
    """The SAE(s) and their optimisation."""
    p.add_argument(
        "--k", type=positive_int, nargs="+", default=[32], help="active latents (several: sweep)"
    )
    p.add_argument(
        "--n-latents", type=positive_int, nargs="+", default=[65536], help="dictionary size(s)"
    )
    p.add_argument(
        "--lr",
        type=positive_float,
        nargs="+",
        default=[None],
        help="learning rate(s); default scales with n_latents",
    )
    p.add_argument(
        "--batch-size", type=positive_int, default=None, help="rows per step (default: see above)"
    )
    p.add_argument(
        "--tokens", type=positive_int, default=None, help="rows to train on (default: see above)"
    )
    p.add_argument("--k-aux", type=nonnegative_int, default=None, help="AuxK latents (d_in/2)")
    p.add_argument("--auxk-coef", type=nonnegative_float, default=1 / 32)
    p.add_argument(
        "--dead-tokens",
        type=positive_int,
        default=None,
        help="rows without firing before a latent is dead",
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
    p.add_argument("--grad-clip", type=positive_float, default=1.0)
    p.add_argument("--warmup-steps", type=nonnegative_int, default=None)


def _add_arch_args(p: argparse.ArgumentParser) -> None:
    """The architecture and its options (None: the SAEConfig default)."""
    p.add_argument("--arch", default="topk", help=f"SAE architecture: {', '.join(ARCHS)}")
    p.add_argument(
        "--groups",
        type=positive_int,
        nargs="+",
        default=None,
        help="matryoshka: nested group sizes (sum: --n-latents; default n/8, n/8, n/4, n/2)",
    )
    p.add_argument(
        "--threshold-ema",
        type=positive_float,
        default=None,
        help="batchtopk/matryoshka: weight of a batch in the inference-threshold estimate",
    )
    p.add_argument(
        "--encoder-init-norm",
        type=positive_float,
        default=ENCODER_INIT_NORM,
        help="initial encoder row norm (default 1/sqrt(3); 1.0: tied to the decoder)",
    )
    p.add_argument(
        "--threshold-init",
        type=positive_float,
        default=None,
        help="jumprelu: initial threshold (default: from the first batch)",
    )
    p.add_argument("--bandwidth", type=positive_float, default=None, help="jumprelu: kernel width")
    p.add_argument(
        "--l0-coef", type=nonnegative_float, default=None, help="jumprelu: L0 penalty weight"
    )
    p.add_argument(
        "--l0-coef-adapt",
        type=nonnegative_float,
        default=None,
        help="jumprelu: L0 weight adaptation toward L0 = k (0: fixed)",
    )


def _add_run_args(p: argparse.ArgumentParser) -> None:
    """How the run goes: seed, device, logging, checkpoints."""
    add_seed_arg(p, help="seed of the weights and of the batches")
    p.add_argument(
        "--fvu-warn",
        type=nonnegative_float,
        default=0.1,
        help="warn when the final FVU is above this",
    )
    p.add_argument(
        "--skip-nonfinite",
        action="store_true",
        help="drop NaN/Inf rows (counted) instead of failing",
    )
    p.add_argument(
        "--device", type=device, default=None, help="cpu or cuda (default: cuda when available)"
    )
    p.add_argument("--log-every", type=positive_int, default=50, help="steps between metric lines")
    p.add_argument(
        "--checkpoint-every",
        type=positive_int,
        default=1000,
        help="steps between training checkpoints",
    )
    p.add_argument("--resume", action="store_true", help="continue from the checkpoints in --out")
    add_progress_arg(p)


def config_from_args(args: argparse.Namespace) -> Any:
    """The :class:`vlmfast.sae.TrainSAEConfig` of the parsed arguments."""
    from vlmfast.sae import TrainSAEConfig

    hooks = list(args.hook)
    return TrainSAEConfig(
        hook=hooks[0] if len(hooks) == 1 else hooks,
        k=list(args.k),
        n_latents=list(args.n_latents),
        lr=list(args.lr),
        arch=args.arch,
        groups=args.groups,
        threshold_ema=args.threshold_ema,
        threshold_init=args.threshold_init,
        bandwidth=args.bandwidth,
        l0_coef=args.l0_coef,
        l0_coef_adapt=args.l0_coef_adapt,
        rows=args.rows,
        batch_size=args.batch_size,
        tokens=args.tokens,
        warmup_steps=args.warmup_steps,
        dead_tokens=args.dead_tokens,
        k_aux=args.k_aux,
        auxk_coef=args.auxk_coef,
        b_dec_init=args.b_dec_init,
        input_scaling=args.input_scaling,
        encoder_init_norm=args.encoder_init_norm,
        autocast_bf16=args.bf16,
        grad_clip=args.grad_clip,
        nan_policy="skip" if args.skip_nonfinite else "error",
        seed=args.seed,
        device=args.device,
        log_every=args.log_every,
        checkpoint_every=args.checkpoint_every,
        resume=args.resume,
    )


def run(args: argparse.Namespace) -> int:
    import torch

    from vlmfast.process_group import join_process_group, leave_process_group
    from vlmfast.sae import train_sae
    from vlmfast.store import ActivationStore

    cfg = config_from_args(args)
    cfg.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    store = ActivationStore.open(args.store)
    rank, world = join_process_group(cfg.device)
    ok = False
    try:
        result = train_sae(
            store, cfg, args.out, rank=rank, world_size=world, progress=not args.no_progress
        )
        ok = True
    finally:
        leave_process_group(ok)
    if rank == 0:
        _report(result, args)
    return 0


def _report(result: Any, args: argparse.Namespace) -> None:
    """What was trained, where it went, and the convergence warnings."""
    from vlmfast.sae.schedule import convergence_warnings

    for done in result.passes or [result]:
        where = ", ".join(str(s.path) for s in done.saes)
        memory = "held in memory" if done.in_memory else "streamed"
        arch = done.saes[0].sae.cfg.arch
        print(
            f"trained {len(done.saes)} {arch} SAE(s) for {done.steps} steps of {done.batch_size} "
            f"rows ({done.epochs:.1f} epochs of {done.n_rows:,} rows, rows={done.rows}, {memory})"
            f" -> {where}"
        )
    for s in result.saes:
        for warning in convergence_warnings(s.fvu, threshold=args.fvu_warn):
            print(f"warning: {s.name}: {warning}", file=sys.stderr)
