"""``vlmfast attribute``: attribution patching of both towers over a few image-caption pairs.

    vlmfast attribute --model synthetic:tiny --data synthetic:n=8,seed=0 --out DIR
    vlmfast attribute --model open_clip:ViT-B-32 --data folder:/imgs --corrupt text-shift \\
        --method atp* --null 4 --exact --out DIR

Writes ``DIR/attribution.json`` (the full result: scores, completeness gaps, null, and
with ``--exact`` the comparison against the exact head sweep), ``DIR/attribution.parquet``
(one row per component) and ``DIR/heatmaps.png`` / ``.svg`` (with matplotlib).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from typing import Any

from vlmfast.causal.core.corruption import CORRUPTIONS, corrupt_inputs
from vlmfast.causal.core.vocabulary import ATTRIBUTION_KINDS, DIRECTIONS
from vlmfast.causal.core.vocabulary import ATTRIBUTION_METHODS as METHODS
from vlmfast.cli import args as A
from vlmfast.cli.outputs import print_skips, skips_json
from vlmfast.tables import write_table

__all__ = ["CORRUPTIONS", "corrupt_inputs", "register", "run"]


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "attribute",
        help="attribution patching (AtP, AtP*, IG) of every head, neuron and position",
        description=(
            "Scores every residual position, head and neuron of both towers by attribution "
            "patching between clean pairs and a corruption of them (denoising: gradient at "
            "the corrupt run, delta = clean - corrupt), on the pair's real score."
        ),
    )
    A.add_model_args(p)
    A.add_data_arg(p, help="data spec, e.g. synthetic:n=8,seed=0")
    p.add_argument("--limit", type=A.positive_int, default=8, help="pairs used (the batch)")
    A.add_out_arg(p)
    A.add_corruption_args(
        p,
        default="image-shift",
        help="image-shift: each image replaced by the next pair's; image-noise: Gaussian "
        "pixel noise (--noise-std); text-shift: the next pair's caption; text-negative: the "
        "record's first hard negative (synthetic data)",
    )
    p.add_argument("--method", default="atp", choices=METHODS)
    p.add_argument("--steps", type=A.positive_int, default=16, help="IG steps (midpoint rule)")
    p.add_argument(
        "--components",
        type=A.choice_list(ATTRIBUTION_KINDS),
        default="resid,heads,neurons",
        help="comma-separated kinds",
    )
    p.add_argument(
        "--towers", type=A.choice_list(A.TOWERS), default="image,text", help="comma-separated"
    )
    p.add_argument("--metric", default="score", choices=["score", "logit_diff", "alignment"])
    p.add_argument("--direction", default="denoising", choices=DIRECTIONS)
    p.add_argument(
        "--null", type=A.nonnegative_int, default=0, help="K random components per layer, exact"
    )
    A.add_seed_arg(p, help="seed of the null and the noise")
    p.add_argument("--exact", action="store_true", help="also run the exact head sweep and compare")
    A.add_progress_arg(p)
    p.set_defaults(func=run)


def _records(spec: str, limit: int) -> Any:
    from vlmfast.data.pairs import read_pairs
    from vlmfast.errors import InputError

    if limit < 2:
        raise InputError(f"--limit must be >= 2 (shift corruptions pair records), got {limit}")
    return read_pairs(spec, limit, minimum=2)


def _attribute(pair: Any, inputs: dict[str, Any], args: argparse.Namespace, bar: Any) -> Any:
    """The attribution and, with ``--exact``, its comparison with the exact head sweep."""
    import vlmfast as vf

    opts = {"towers": A.split(args.towers), "metric": args.metric, "direction": args.direction}
    bar.set_postfix_str(f"{args.method}" + (f" + null {args.null}" if args.null else ""))
    att = vf.causal.attribute(
        pair, **inputs, components=A.split(args.components), method=args.method,
        steps=args.steps, null=args.null, seed=args.seed, **opts,
    )  # fmt: skip
    bar.update()
    if not args.exact:
        return att, None
    bar.set_postfix_str("exact head sweep")
    exact = vf.causal.exact_effects(pair, **inputs, components=("heads",), **opts)
    bar.update()
    return att, {f"{t}/{k}": v for (t, k), v in att.compare(exact).items()}


def _write(att: Any, comparison: Any, pairs: Any, args: argparse.Namespace) -> tuple[str, bool]:
    from vlmfast.causal.core import json_safe

    data = att.to_dict()
    data["run"] = {
        "model": args.model,
        "data": args.data,
        "pairs": len(pairs),
        "corrupt": args.corrupt,
        "noise_std": args.noise_std if args.corrupt == "image-noise" else None,
        "skipped_records": skips_json(pairs.report),
    }
    data["compare_exact_heads"] = comparison
    table = write_table(att.table(), args.out / "attribution")
    data["run"]["table"] = table.name
    (args.out / "attribution.json").write_text(
        json.dumps(json_safe(data), indent=2, allow_nan=False)
    )
    plotted = importlib.util.find_spec("matplotlib") is not None
    if plotted:
        att.plot(args.out / "heatmaps")
    return table.name, plotted


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    import vlmfast as vf

    with tqdm(
        total=4 + int(args.exact), unit="step", desc="attribute", disable=args.no_progress
    ) as bar:
        bar.set_postfix_str("load model")
        pair = vf.load_pair(args.model, pretrained=args.pretrained, device=args.device)
        bar.update()
        bar.set_postfix_str("read data")
        pairs = _records(args.data, args.limit)
        print_skips(pairs.report)
        inputs = corrupt_inputs(
            pair, pairs.records, args.corrupt, seed=args.seed, noise_std=args.noise_std
        )
        bar.update()
        att, comparison = _attribute(pair, inputs, args, bar)
        bar.set_postfix_str("write")
        args.out.mkdir(parents=True, exist_ok=True)
        table, plotted = _write(att, comparison, pairs, args)
        bar.update()
    _summary(att, comparison)
    print(f"wrote {args.out / 'attribution.json'}, {table}", end="")
    print(", heatmaps.png/.svg" if plotted else " (no heatmaps: matplotlib is not importable)")
    return 0


def _summary(att: Any, comparison: dict[str, Any] | None) -> None:
    print(
        f"{att.method} ({att.direction}): m(clean) {att.metric_clean:.4g}, m(corrupt) "
        f"{att.metric_corrupt:.4g}; completeness gap "
        + ", ".join(f"{k} {v:+.4g}" for k, v in att.completeness_gap.items())
    )
    for (tower, kind), s in att.scores.items():
        flat = att.ranking((tower, kind)).flatten()
        top = flat.topk(min(3, flat.numel())).indices.tolist()
        width = s.shape[1]
        best = ", ".join(f"L{i // width}.{i % width} {float(s.flatten()[i]):+.3g}" for i in top)
        print(f"  {tower:5s} {kind:7s} top: {best}")
    if comparison:
        for key, c in comparison.items():
            print(
                f"  vs exact {key}: Spearman {c['spearman']:.3f} (|.| {c['spearman_abs']:.3f}), "
                f"top-{int(c['k'])} overlap {c['topk_overlap']:.2f}"
            )
