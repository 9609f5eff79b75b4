"""``vlmfast circuit``: find the smallest faithful circuit of heads / neurons over a few pairs.

    vlmfast circuit --model synthetic:tiny --data synthetic:n=8,seed=0 --out DIR
    vlmfast circuit --model open_clip:ViT-B-32 --data DIR --corrupt text --components heads \\
        --ranking atp --ablation mean --target 0.8 --null 100 --out DIR
    vlmfast circuit --model synthetic:tiny --data synthetic:n=400,seed=13 --corrupt both-swap \\
        --concept red --out DIR    # one search over both towers, drawn meeting in the logit

``--corrupt text-swap | image-swap | both-swap`` (with ``--concept``) corrupt the pairs whose
caption names the concept: its word swapped in the caption, the synthetic scene re-rendered
with it changed, or both (``vlmfast.causal.core.corruption.concept_corruption``); the search
then uses that side's corruption (``CircuitConfig.corrupt``).

Writes ``DIR/circuit.json`` (``Circuit.to_json``: components, curve, sparsity, faithfulness
with its bootstrap interval, completeness, AUC, null), ``DIR/circuit.parquet`` (curve rows
and one row per ranked component, ``table`` says which), ``DIR/circuit_curve.png`` and,
with ``--edges`` (default on), ``circuit.dot`` / ``circuit.svg`` of the circuit's edges.
"""

from __future__ import annotations

import argparse
import importlib.util
from typing import Any

from vlmfast.cli import args as A
from vlmfast.cli.outputs import print_skips, skips_json
from vlmfast.tables import write_table

# --corrupt: the attribute CLI's corruptions, plus "image" / "text" for the shifts
_ALIASES = {"image": "image-shift", "text": "text-shift"}


def register(subparsers: Any) -> None:
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
    A.add_model_args(p)
    A.add_data_arg(p, help="data spec, e.g. synthetic:n=8,seed=0")
    p.add_argument("--n", type=A.positive_int, default=8, help="image-caption pairs (the batch)")
    A.add_out_arg(p)
    A.add_corruption_args(
        p,
        default="image",
        aliases=tuple(_ALIASES),
        help="the counterfactual for the ranking and for --ablation resample: image "
        "(= image-shift: each image replaced by the next pair's), text (= text-shift), "
        "image-noise, text-negative (as in vlmfast attribute); text-swap, image-swap "
        "(synthetic data), both-swap change --concept",
        swaps=True,
    )
    p.add_argument(
        "--components",
        type=A.choice_list(("heads", "neurons")),
        default="heads,neurons",
        help="comma-separated kinds",
    )
    p.add_argument(
        "--towers", type=A.choice_list(A.TOWERS), default="image,text", help="comma-separated"
    )
    p.add_argument("--ranking", default="atp", choices=["atp", "atp*", "exact"])
    p.add_argument("--ablation", default="mean", choices=["mean", "resample", "zero"])
    p.add_argument("--target", type=A.fraction, default=0.8, help="faithfulness to keep, in (0, 1]")
    p.add_argument(
        "--null", type=A.nonnegative_int, default=100, help="random orderings (0 = none)"
    )
    p.add_argument("--grid", type=A.positive_int, default=32, help="sizes on the log-spaced grid")
    p.add_argument(
        "--null-grid", type=A.positive_int, default=None,
        help="sizes per null curve (a thinned subset of the grid; default: all)",
    )  # fmt: skip
    A.add_seed_arg(p, help="seed of the null, bootstrap and noise")
    p.add_argument("--metric", default="score", choices=["score", "logit_diff", "alignment"])
    A.add_max_rows_arg(p)
    p.add_argument("--no-edges", action="store_true", help="skip circuit edges / drawings")
    A.add_progress_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import vlmfast as vf
    from vlmfast.causal.circuits.draw import draw_circuit
    from vlmfast.causal.core import corrupt_inputs
    from vlmfast.causal.core.corruption import SIDES, concept_corruption
    from vlmfast.data.pairs import read_pairs
    from vlmfast.errors import InputError

    if args.n < 2:
        raise InputError(f"--n must be >= 2 (shift corruptions pair records), got {args.n}")
    corrupt = _ALIASES.get(args.corrupt, args.corrupt)
    if corrupt in SIDES and not args.concept:
        raise InputError(f"--corrupt {corrupt} needs --concept (the concept it swaps, e.g. red)")
    pair = vf.load_pair(args.model, pretrained=args.pretrained, device=args.device).eval()
    pairs = read_pairs(args.data, args.n, minimum=2, naming=args.concept)
    print_skips(pairs.report)
    if corrupt in SIDES:
        inputs = concept_corruption(pair, pairs.records, args.concept, corrupt)
    else:
        inputs = corrupt_inputs(
            pair, pairs.records, corrupt, seed=args.seed, noise_std=args.noise_std
        )
    swap = inputs.pop("swap", None)
    circuit = vf.causal.find_circuit(
        pair, **inputs, components=A.split(args.components), towers=A.split(args.towers),
        ranking=args.ranking, ablation=args.ablation, target=args.target, null=args.null,
        seed=args.seed, metric=args.metric, grid=args.grid, null_grid=args.null_grid,
        max_rows=args.max_rows, progress=not args.no_progress, corrupt=SIDES.get(corrupt, "given"),
    )  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    written = [write_table(circuit.rows(), args.out / "circuit")]
    drawn = [] if args.no_edges else draw_circuit(
        circuit, pair, inputs, args.out / "circuit", metric=args.metric, max_rows=args.max_rows
    )[1]  # fmt: skip
    circuit.meta["run"] = {
        "model": args.model,
        "data": args.data,
        "pairs": len(pairs),
        "corrupt": corrupt,
        "concept": args.concept,
        "swap_to": swap,
        "noise_std": args.noise_std if corrupt == "image-noise" else None,
        "skipped_records": skips_json(pairs.report),
    }
    (args.out / "circuit.json").write_text(circuit.to_json())
    written.insert(0, args.out / "circuit.json")
    if importlib.util.find_spec("matplotlib") is not None:
        import matplotlib.pyplot as plt

        plt.close(circuit.plot(args.out / "circuit_curve.png"))
        written.append(args.out / "circuit_curve.png")
    written += drawn
    _summary(circuit)
    print("wrote " + ", ".join(p.name for p in written))
    return 0


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
