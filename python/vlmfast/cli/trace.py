"""``vlmfast trace``: causal tracing (corrupt, then restore) of both towers over a few pairs.

    vlmfast trace --model synthetic:tiny --data synthetic:n=4,seed=0 --out DIR
    vlmfast trace --model open_clip:ViT-B-32 --data DIR --tower image --noise 3x --null 200

Writes, per traced tower, ``trace_{tower}.json`` (everything, ``TraceResult.to_json``),
a long table ``trace_{tower}.parquet``,
``trace_{tower}.npz`` (the tables as arrays) and ``trace_{tower}.png`` / ``.svg`` heatmaps,
and prints the clean/corrupt metric, the best cell of each kind and its null p-value.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from vlmfast.cli._tables import image_caption_records, write_table
from vlmfast.errors import InputError


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "trace",
        help="causal tracing (ROME-style corrupt-and-restore) of the image and text towers",
        description=(
            "Corrupts one tower's input embeddings (zero / 3x-std noise), restores one "
            "hidden state at a time from the clean run and reports the metric recovered, "
            "for each layer and position, with an optional random-restoration null."
        ),
    )
    p.add_argument("--model", required=True, help="model spec, e.g. synthetic:tiny")
    p.add_argument("--data", required=True, help="data spec, e.g. synthetic:n=4,seed=0 or a folder")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--n", type=int, default=4, help="image-text pairs traced together")
    p.add_argument("--tower", default="both", choices=["image", "text", "both"])
    p.add_argument("--noise", default="zero", help="zero, 3x or a float std")
    p.add_argument("--samples", type=int, default=10, help="noise draws (ignored for zero)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--positions", default=None, help="corrupted positions, comma-separated (default: all)"
    )
    p.add_argument("--kinds", default="resid,attn_out,mlp_out", help="comma-separated kinds")
    p.add_argument("--window", type=int, default=1, help="layers restored for attn_out/mlp_out")
    p.add_argument("--metric", default="score", choices=["score", "logit_diff", "alignment"])
    p.add_argument("--null", type=int, default=0, help="random restorations per kind and layer")
    p.add_argument("--null-count", type=int, default=1, help="units per null restoration")
    p.add_argument("--method", default="batched", choices=["batched", "serial"])
    p.add_argument("--max-rows", type=int, default=512, help="batch rows per forward")
    p.add_argument("--format", default="png,svg", help="heatmap formats, comma-separated")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _noise(text: str) -> str | float:
    if text in ("zero", "3x"):
        return text
    try:
        return float(text)
    except ValueError:
        raise InputError(f"--noise must be 'zero', '3x' or a float std, got {text!r}") from None


def _load_inputs(pair: Any, spec: str, n: int) -> tuple[Any, Any, list[str]]:
    if n < 1:
        raise InputError(f"--n must be >= 1, got {n}")
    records = image_caption_records(spec, n)
    captions = [str(r.caption) for r in records]
    return pair.preprocess([r.image for r in records]), pair.tokenize(captions), captions


def _save(res: Any, out: Path, formats: list[str]) -> list[Path]:
    import numpy as np

    stem = out / f"trace_{res.tower}"
    written = [stem.with_suffix(".json")]
    written[0].write_text(res.to_json(indent=1))
    written.append(write_table(res.rows(), stem))
    arrays = {f"effect_{k}": v.numpy() for k, v in res.effect.items()}
    arrays |= {f"recovery_{k}": v.numpy() for k, v in res.recovery.items()}
    if res.null:
        arrays |= {f"null_p_{k}": v.p_value.numpy() for k, v in res.null.items()}
    np.savez(stem.with_suffix(".npz"), **arrays)
    written.append(stem.with_suffix(".npz"))
    fig = res.plot()
    for fmt in formats:
        path = stem.with_suffix(f".{fmt}")
        fig.savefig(path, dpi=150)
        written.append(path)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return written


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    import vlmfast as vf
    from vlmfast.causal.tracing import prepare_counts, trace

    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    formats = [f.strip().lower() for f in args.format.split(",") if f.strip()]
    bad = [f for f in formats if f not in ("png", "svg", "pdf")]
    if bad:
        raise InputError(f"--format entries must be png, svg or pdf, got {bad}")
    positions = None
    if args.positions:
        try:
            positions = [int(x) for x in args.positions.split(",")]
        except ValueError:
            raise InputError(
                f"--positions must be comma-separated ints, got {args.positions!r}"
            ) from None
    noise = _noise(args.noise)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pair = vf.load_pair(args.model, device=args.device)
    images, texts, _ = _load_inputs(pair, args.data, args.n)
    towers = ["image", "text"] if args.tower == "both" else [args.tower]
    for tower in towers:
        counts = prepare_counts(pair, tower, images if tower == "image" else texts, kinds)
        layers = pair.config.tower(tower).layers
        total = layers * sum(counts.values())
        if args.null and args.null_count > 1:
            total += layers * len(kinds) * args.null
        with tqdm(
            total=total, unit="restore", desc=f"trace {tower}", disable=args.no_progress
        ) as bar:
            res = trace(
                pair, images, texts, tower, noise=noise, samples=args.samples, seed=args.seed,
                positions=positions, kinds=kinds, window=args.window, metric=args.metric,
                null=args.null, null_count=args.null_count, method=args.method,
                max_rows=args.max_rows, progress=bar.update,
            )  # fmt: skip
        res.meta.update({"model": args.model, "data": args.data, "n": int(images.shape[0])})
        written = _save(res, out, formats)
        print(res.summary())
        print("wrote " + ", ".join(str(p) for p in written))
    return 0
