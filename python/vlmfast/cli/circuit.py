"""``vlmfast circuit``: find the smallest faithful circuit of heads / neurons over a few pairs.

    vlmfast circuit --model synthetic:tiny --data synthetic:n=8,seed=0 --out DIR
    vlmfast circuit --model open_clip:ViT-B-32 --data DIR --corrupt text --components heads \\
        --ranking atp --ablation mean --target 0.8 --null 100 --out DIR

Writes ``DIR/circuit.json`` (``Circuit.to_json``: components, curve, sparsity, faithfulness
with its bootstrap interval, completeness, AUC, null), ``DIR/circuit.parquet`` (curve rows
and one row per ranked component, ``table`` says which), ``DIR/circuit_curve.png`` and,
with ``--edges`` (default on), ``circuit.dot`` / ``circuit.svg`` of the circuit's edges.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from typing import Any

from vlmfast.errors import InputError

# --corrupt: the attribute CLI's corruptions, plus "image" / "text" for the shifts
_ALIASES = {"image": "image-shift", "text": "text-shift"}


def register(subparsers: Any) -> None:
    from vlmfast.cli.attribute import CORRUPTIONS

    p = subparsers.add_parser(
        "circuit",
        help="circuit discovery: the smallest set of heads/neurons keeping the score",
        description=(
            "Ranks every head / neuron of the chosen towers (AtP, AtP*, exact or given), "
            "evaluates the faithfulness curve f(k) = (m(top-k) - m(empty)) / (m(model) - "
            "m(empty)) with everything outside the top-k ablated, and reports the smallest "
            "k with f >= target from there on, against random orderings."
        ),
    )
    p.add_argument("--model", required=True, help="model spec, e.g. synthetic:tiny")
    p.add_argument("--pretrained", default=None, help="weights tag or checkpoint (open_clip)")
    p.add_argument("--data", required=True, help="data spec, e.g. synthetic:n=8,seed=0")
    p.add_argument("--n", type=int, default=8, help="image-caption pairs (the batch)")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument(
        "--corrupt",
        default="image",
        choices=[*_ALIASES, *CORRUPTIONS],
        help="the counterfactual for the ranking and for --ablation resample: image "
        "(= image-shift: each image replaced by the next pair's), text (= text-shift), "
        "image-noise, text-negative (as in vlmfast attribute)",
    )
    p.add_argument("--noise-std", type=float, default=1.0, help="image-noise std (pixel units)")
    p.add_argument("--components", default="heads,neurons", help="comma-separated kinds")
    p.add_argument("--towers", default="image,text", help="comma-separated towers")
    p.add_argument("--ranking", default="atp", choices=["atp", "atp*", "exact"])
    p.add_argument("--ablation", default="mean", choices=["mean", "resample", "zero"])
    p.add_argument("--target", type=float, default=0.8, help="faithfulness to keep, in (0, 1]")
    p.add_argument("--null", type=int, default=100, help="random orderings (0 = none)")
    p.add_argument("--grid", type=int, default=32, help="sizes on the log-spaced grid")
    p.add_argument(
        "--null-grid", type=int, default=None,
        help="sizes per null curve (a thinned subset of the grid; default: all)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of the null, bootstrap and noise")
    p.add_argument("--metric", default="score", choices=["score", "logit_diff", "alignment"])
    p.add_argument("--max-rows", type=int, default=512, help="batch rows per forward")
    p.add_argument("--no-edges", action="store_true", help="skip circuit edges / drawings")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def run(args: argparse.Namespace) -> int:
    import vlmfast as vf
    from vlmfast.cli._tables import image_caption_records, write_table
    from vlmfast.cli.attribute import _inputs

    if args.n < 2:
        raise InputError(f"--n must be >= 2 (shift corruptions pair records), got {args.n}")
    args.corrupt = _ALIASES.get(args.corrupt, args.corrupt)
    args.out.mkdir(parents=True, exist_ok=True)
    pair = vf.load_pair(args.model, pretrained=args.pretrained, device=args.device).eval()
    records = image_caption_records(args.data, args.n, minimum=2)
    inputs = _inputs(pair, records, args)
    circuit = vf.causal.find_circuit(
        pair,
        **inputs,
        components=_split(args.components),
        towers=_split(args.towers),
        ranking=args.ranking,
        ablation=args.ablation,
        target=args.target,
        null=args.null,
        seed=args.seed,
        metric=args.metric,
        grid=args.grid,
        null_grid=args.null_grid,
        max_rows=args.max_rows,
        progress=not args.no_progress,
    )
    written = [write_table(circuit.rows(), args.out / "circuit")]
    drawn = _drawings(circuit, pair, inputs, args) if not args.no_edges else []
    circuit.meta["run"] = {
        "model": args.model,
        "data": args.data,
        "pairs": len(records),
        "corrupt": args.corrupt,
        "noise_std": args.noise_std if args.corrupt == "image-noise" else None,
    }
    (args.out / "circuit.json").write_text(circuit.to_json())
    written.insert(0, args.out / "circuit.json")
    if importlib.util.find_spec("matplotlib") is not None:
        import matplotlib.pyplot as plt

        fig = circuit.plot(args.out / "circuit_curve.png")
        plt.close(fig)
        written.append(args.out / "circuit_curve.png")
    written += drawn
    _summary(circuit)
    print("wrote " + ", ".join(p.name for p in written))
    return 0


def _drawings(
    circuit: Any, pair: Any, inputs: dict[str, Any], args: argparse.Namespace
) -> list[Path]:
    """``circuit.dot`` / ``circuit.svg`` when the edge and drawing modules are there."""
    out: list[Path] = []
    if importlib.util.find_spec("vlmfast.causal.circuit_graph") is None or not circuit.nodes:
        return out
    circuit.edges(pair, **inputs, metric=args.metric, max_rows=args.max_rows)
    labels = {n.key: f"rank {r}" for r, n in enumerate(circuit.nodes)}
    if importlib.util.find_spec("vlmfast.causal.circuit_dot") is not None:
        (args.out / "circuit.dot").write_text(circuit.to_dot(labels=labels))
        out.append(args.out / "circuit.dot")
    if importlib.util.find_spec("vlmfast.causal.circuit_svg") is not None:
        (args.out / "circuit.svg").write_text(circuit.to_svg(labels=labels))
        out.append(args.out / "circuit.svg")
    return out


def _summary(c: Any) -> None:
    p = f", p = {c.pvalue:.3g} vs {c.null.size} random orderings" if c.pvalue is not None else ""
    lo, hi = c.faithfulness_interval
    print(
        f"circuit: {c.size} of {c.n_nodes} components (sparsity {c.sparsity:.4f}{p}); "
        f"faithfulness {c.faithfulness:.3f} [{lo:.3f}, {hi:.3f}], completeness "
        f"{c.completeness:.3f}, AUC {c.auc:.3f} ({c.ranking} ranking, {c.ablation} ablation)"
    )
    for r, node in enumerate(c.nodes[:10]):
        score = f" score {c.scores[r]:.4g}" if c.scores is not None else ""
        print(f"  #{r} {node.key}{score}")
    if c.size > 10:
        print(f"  ... {c.size - 10} more")
