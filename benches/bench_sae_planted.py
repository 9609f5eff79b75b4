"""Planted-dictionary benchmark: every SAE architecture on the same planted data.

Each architecture trains on rows of :class:`~vlmfast.sae.planted.PlantedGenerator` (a
known dictionary with power-law frequencies, parent/child features, co-firing groups and
noise) with the same k, width, batches, learning rate and seed, then is scored on
held-out rows against the truth (:func:`~vlmfast.sae.matching.score_dictionary`): mean
max cosine of each true atom to the learned decoder and the MCC of the best one-to-one
matching of activations, each with a bootstrap interval and a random-dictionary null.
``k`` is the L0 of topk / batchtopk / matryoshka; JumpReLU's L0 is steered towards k by
its adaptive L0 weight but stays below when the data need fewer latents, so the table
prints each one's measured inference L0 and FVU beside the scores.

    python benches/bench_sae_planted.py                 # small: d=64, 128 features, ~1 min
    python benches/bench_sae_planted.py --scale 2 --k 6 --steps 2000
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from vlmfast.sae import PlantedConfig, PlantedGenerator, SAETrainer, TrainConfig, train
from vlmfast.sae.archs import build_sae
from vlmfast.sae.config import ARCHS, ENCODER_INIT_NORM, SAEConfig
from vlmfast.sae.matching import score_dictionary


def run_arch(arch: str, args: argparse.Namespace, cfg: PlantedConfig) -> dict[str, float]:
    """Trains one architecture on the planted stream (the same batches and held-out rows
    for every architecture: a fresh generator of the same seed); returns its figures."""
    gen = PlantedGenerator(cfg)
    d, width = gen.cfg.d, 2 * gen.n_features
    sae = build_sae(
        SAEConfig(
            d,
            width,
            args.k,
            arch=arch,
            seed=args.seed,
            dead_tokens=20 * args.batch,
            encoder_init_norm=args.encoder_init_norm,
        )
    )
    trainer = SAETrainer(
        sae,
        TrainConfig(lr=args.lr, warmup_steps=args.steps // 20, decay_start=0.7, seed=args.seed),
        total_steps=args.steps,
    )
    batches = (gen.sample(args.batch).rows for _ in range(args.steps))
    started = time.perf_counter()
    train(batches, [trainer], log_every=args.steps)
    seconds = time.perf_counter() - started
    held = gen.sample(args.held_out)
    score = score_dictionary(sae, gen.dictionary, [(held.rows, held.activations)], seed=args.seed)
    with torch.no_grad():
        values, _ = sae.encode(held.rows)
        recon = sae(held.rows)
    centred = held.rows - held.rows.mean(0)
    fvu = float((recon - held.rows).pow(2).sum() / centred.pow(2).sum())
    return {
        "l0": float((values > 0).sum(1).double().mean()),
        "fvu": fvu,
        "mean_max_cosine": score.mean_max_cosine,
        "mmc_lo": score.mean_max_cosine_ci[0],
        "mmc_hi": score.mean_max_cosine_ci[1],
        "null_mmc": score.null_mean_max_cosine,
        "mcc": score.mcc,
        "mcc_lo": score.mcc_ci[0],
        "mcc_hi": score.mcc_ci[1],
        "null_mcc": score.null_mcc,
        "train_s": seconds,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=int, default=2, help="d = 32*scale, features = 64*scale")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--held-out", type=int, default=8192)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--archs", default=",".join(ARCHS))
    parser.add_argument(
        "--encoder-init-norm",
        type=float,
        default=ENCODER_INIT_NORM,
        help="initial encoder row norm (SAEConfig.encoder_init_norm; 1.0: tied to the decoder)",
    )
    parser.add_argument("--json", default="", help="also write the table here")
    args = parser.parse_args(argv)
    cfg = PlantedConfig(d=32 * args.scale, n_features=64 * args.scale, seed=args.seed)
    gen = PlantedGenerator(cfg)
    true_l0 = float((gen.sample(8192).activations > 0).sum(1).double().mean())
    print(
        f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__},"
        f" threads {torch.get_num_threads()}; planted d={cfg.d}, {cfg.n_features} features"
        f" (true L0 {true_l0:.2f}), {2 * cfg.n_features} latents, k={args.k},"
        f" {args.steps} steps x {args.batch} rows, seed {args.seed},"
        f" encoder init norm {args.encoder_init_norm:.3f}"
    )
    print(
        f"{'arch':<11}{'L0':>6}{'FVU':>7}  {'mean max cos [95% CI] (null)':<30}{'MCC [95% CI] (null)':<28}{'train s':>8}"
    )
    table = {}
    for arch in args.archs.split(","):
        r = run_arch(arch, args, cfg)
        table[arch] = r
        print(
            f"{arch:<11}{r['l0']:>6.2f}{r['fvu']:>7.3f}  "
            f"{r['mean_max_cosine']:.3f} [{r['mmc_lo']:.3f}, {r['mmc_hi']:.3f}] ({r['null_mmc']:.2f})   "
            f"{r['mcc']:.3f} [{r['mcc_lo']:.3f}, {r['mcc_hi']:.3f}] ({r['null_mcc']:.2f})   "
            f"{r['train_s']:>6.1f}",
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"true_l0": true_l0, "args": vars(args), "archs": table}, fh, indent=2)


if __name__ == "__main__":
    main()
