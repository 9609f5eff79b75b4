"""``vlmfast synth``: the synthetic concept-binding benchmark and its bundled tiny CLIP.

vlmfast synth generate --n 1000 --seed 0 --split test --out DIR   # PNGs + captions.jsonl
vlmfast synth train --seed 0 --out DIR                            # trains the tiny CLIP
vlmfast synth eval --seed 1234 [--weights DIR] [--json]           # held-out table
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from vlmfast.errors import InputError


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "synth", help="synthetic concept-binding benchmark and tiny CLIP"
    )
    sub = parser.add_subparsers(dest="synth_command", metavar="ACTION", required=True)

    gen = sub.add_parser("generate", help="write benchmark samples as PNG files + captions.jsonl")
    gen.add_argument("--n", type=int, default=1000, help="number of samples")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--split", default="test", choices=["train", "test", "compositional"])
    gen.add_argument("--noise", type=float, default=0.0, help="pixel noise std (0-255 units)")
    gen.add_argument("--texture", action="store_true", help="striped object texture")
    gen.add_argument("--out", required=True, help="output folder (a folder pair source)")
    gen.set_defaults(func=_generate)

    tr = sub.add_parser("train", help="train the tiny CLIP contrastively on the benchmark")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--steps", type=int, default=1800)
    tr.add_argument("--batch-size", type=int, default=128)
    tr.add_argument("--lr", type=float, default=1e-3)
    tr.add_argument("--threads", type=int, default=2)
    tr.add_argument("--max-minutes", type=float, default=15.0)
    tr.add_argument(
        "--position-init-scale",
        type=float,
        default=20.0,
        help="image position-embedding init multiplier (1 = open_clip's)",
    )
    tr.add_argument(
        "--aux-weight", type=float, default=0.5, help="auxiliary probe loss weight (0 = off)"
    )
    tr.add_argument(
        "--stop-after",
        type=int,
        default=None,
        help="stop after N steps, keeping the --steps schedule",
    )
    tr.add_argument("--eval-every", type=int, default=0, help="quick held-out eval every N steps")
    tr.add_argument(
        "--out", required=True, help="folder for model.safetensors, config.json, train.json"
    )
    tr.set_defaults(func=_train)

    ev = sub.add_parser("eval", help="held-out accuracy table of a tiny CLIP (default: bundled)")
    ev.add_argument("--seed", type=int, default=1234, help="fresh evaluation seed")
    ev.add_argument("--n", type=int, default=2000, help="samples per split")
    ev.add_argument(
        "--weights", default=None, help="folder written by `synth train` (default: bundled)"
    )
    ev.add_argument("--json", action="store_true", help="print the full result as JSON")
    ev.add_argument(
        "--card", action="store_true", help="write MODEL_CARD.md + eval.json into --weights"
    )
    ev.set_defaults(func=_eval)


def _generate(args: argparse.Namespace) -> int:
    from vlmfast.data.synthetic.export import export_folder

    t0 = time.time()
    path = export_folder(
        args.out,
        n=args.n,
        seed=args.seed,
        split=args.split,
        noise_std=args.noise,
        texture=args.texture,
    )
    print(f"wrote {args.n} samples to {path} in {time.time() - t0:.1f} s")
    return 0


def _train(args: argparse.Namespace) -> int:
    from vlmfast.data.synthetic.train import TrainConfig, train

    cfg = TrainConfig(
        seed=args.seed,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        threads=args.threads,
        max_minutes=args.max_minutes,
        stop_after=args.stop_after,
        position_init_scale=args.position_init_scale,
        aux_weight=args.aux_weight,
    )
    train(cfg, out_dir=args.out, eval_every=args.eval_every, log=lambda s: print(s, flush=True))
    print(f"saved to {args.out}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from vlmfast.data.synthetic.bundled import load_bundled_clip, load_clip_dir
    from vlmfast.data.synthetic.evaluate import evaluate_model, format_table

    if args.weights is None:
        model, tok, info = load_bundled_clip()
    else:
        model, tok, info = load_clip_dir(Path(args.weights))
    train_seed = info.get("train_config", {}).get("seed")
    if train_seed is not None and args.seed == train_seed:
        raise InputError(f"--seed {args.seed} is the training seed; pick a fresh seed")
    result = evaluate_model(model, tok, seed=args.seed, n=args.n)
    if args.card:
        if args.weights is None:
            raise InputError("--card needs --weights DIR (the bundled card ships with the package)")
        from vlmfast.data.synthetic.card import write_model_card

        print(f"wrote {write_model_card(Path(args.weights), result)}", file=sys.stderr)
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
    else:
        print(format_table(result))
    return 0
