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

from vlmfast.causal.core.vocabulary import TRACE_KINDS
from vlmfast.cli import args as A
from vlmfast.cli.outputs import print_skips, skips_json
from vlmfast.tables import write_table

_FORMATS = ("png", "svg", "pdf")


def _noise(text: str) -> str | float:
    if text in ("zero", "3x"):
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--noise must be 'zero', '3x' or a float std, got {text!r}"
        ) from None


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
    A.add_model_args(p)
    A.add_data_arg(p, help="data spec, e.g. synthetic:n=4,seed=0 or a folder")
    A.add_out_arg(p)
    p.add_argument("--n", type=A.positive_int, default=4, help="image-text pairs traced together")
    p.add_argument("--tower", default="both", choices=["image", "text", "both"])
    p.add_argument("--noise", type=_noise, default="zero", help="zero, 3x or a float std")
    p.add_argument(
        "--samples", type=A.positive_int, default=10, help="noise draws (ignored for zero)"
    )
    A.add_seed_arg(p)
    p.add_argument(
        "--positions",
        type=A.int_list,
        default=None,
        help="corrupted positions, comma-separated (default: all)",
    )
    p.add_argument(
        "--kinds",
        type=A.choice_list(TRACE_KINDS),
        default="resid,attn_out,mlp_out",
        help="comma-separated kinds",
    )
    p.add_argument(
        "--window", type=A.positive_int, default=1, help="layers restored for attn_out/mlp_out"
    )
    p.add_argument("--metric", default="score", choices=["score", "logit_diff", "alignment"])
    p.add_argument(
        "--null", type=A.nonnegative_int, default=0, help="random restorations per kind and layer"
    )
    p.add_argument(
        "--null-count", type=A.positive_int, default=1, help="units per null restoration"
    )
    p.add_argument("--method", default="batched", choices=["batched", "serial"])
    A.add_max_rows_arg(p)
    p.add_argument(
        "--format",
        type=A.choice_list(_FORMATS),
        default="png,svg",
        help="heatmap formats, comma-separated",
    )
    A.add_progress_arg(p)
    p.set_defaults(func=run)


def _save(res: Any, out: Path, formats: list[str]) -> list[Path]:
    from vlmfast.causal.tracing.arrays import save_trace_arrays

    stem = out / f"trace_{res.tower}"
    written = [stem.with_suffix(".json")]
    written[0].write_text(res.to_json(indent=1))
    written.append(write_table(res.rows(), stem))
    written.append(save_trace_arrays(res, stem.with_suffix(".npz")))
    fig = res.plot()
    for fmt in formats:
        path = stem.with_suffix(f".{fmt}")
        fig.savefig(path, dpi=150)
        written.append(path)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return written


def _trace(pair: Any, images: Any, texts: Any, tower: str, args: argparse.Namespace) -> Any:
    from tqdm import tqdm

    from vlmfast.causal.tracing import prepare_counts, trace

    kinds = A.split(args.kinds)
    counts = prepare_counts(pair, tower, images if tower == "image" else texts, kinds)
    layers = pair.config.tower(tower).layers
    total = layers * sum(counts.values())
    if args.null and args.null_count > 1:
        total += layers * len(kinds) * args.null
    with tqdm(total=total, unit="restore", desc=f"trace {tower}", disable=args.no_progress) as bar:
        return trace(
            pair, images, texts, tower, noise=args.noise, samples=args.samples, seed=args.seed,
            positions=args.positions, kinds=kinds, window=args.window, metric=args.metric,
            null=args.null, null_count=args.null_count, method=args.method,
            max_rows=args.max_rows, progress=bar.update,
        )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    import vlmfast as vf
    from vlmfast.data.pairs import read_pairs

    pair = vf.load_pair(args.model, pretrained=args.pretrained, device=args.device)
    pairs = read_pairs(args.data, args.n)
    print_skips(pairs.report)
    images, texts = pair.preprocess(pairs.images), pair.tokenize(pairs.captions)
    towers = ["image", "text"] if args.tower == "both" else [args.tower]
    args.out.mkdir(parents=True, exist_ok=True)
    for tower in towers:
        res = _trace(pair, images, texts, tower, args)
        res.meta.update({"model": args.model, "data": args.data, "n": int(images.shape[0])})
        if pairs.report.n_bad:
            res.meta["skipped_records"] = skips_json(pairs.report)
        written = _save(res, args.out, A.split(args.format))
        print(res.summary())
        print("wrote " + ", ".join(str(p) for p in written))
    return 0
