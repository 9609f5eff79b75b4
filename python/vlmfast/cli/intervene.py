"""``vlmfast intervene``: ablate or steer each concept's most selective units, with a null.

Reads a scoring result DIR (``vlmfast score`` / ``ScoringResult.save``), picks the top
``--n`` units per concept (``vf.causal.top_units``), runs ``concept_intervention`` for each
concept and writes ``OUT/intervene.json`` (every result) and ``OUT/intervene.parquet``
(one row per target x measured concept x metric).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from vlmfast.cli._tables import write_table


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "intervene",
        help="ablate / steer each concept's top units; target vs other concepts vs random units",
        description=(
            "For each concept, takes the N most selective units of a scoring result, ablates "
            "or steers them and measures the change in zero-shot margin, matched score, cosine, "
            "zero-shot accuracy and retrieval@1/@5 on the target concept, the other concepts "
            "and overall, against random unit sets of the same size and layer mix."
        ),
    )
    p.add_argument("--model", required=True, help="model spec, e.g. synthetic:tiny")
    p.add_argument(
        "--data",
        default="synthetic:test:256",
        help="evaluation pairs: synthetic[:split[:n[:seed[:max_objects]]]]",
    )
    p.add_argument("--scores", required=True, help="scoring result DIR (vlmfast score --out)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--concepts", default=None, help="comma-separated targets (default: all shared)")
    p.add_argument("--n", type=int, default=50, help="units per concept")
    p.add_argument("--modality", default=None, help="scores modality (image / text)")
    p.add_argument("--hooks", default=None, help="comma-separated hook globs to pick units from")
    p.add_argument("--mode", default="ablate", choices=["ablate", "steer"])
    p.add_argument("--ablation", default="mean", choices=["mean", "zero"])
    p.add_argument("--alpha", type=float, default=None, help="steering strength (--mode steer)")
    p.add_argument("--null", type=int, default=100, help="random unit sets (>= 20 for p-values)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--sae", default=None, help="SAE checkpoint dir when the scores are SAE features"
    )
    p.add_argument("--max-rows", type=int, default=2048, help="batch rows per forward")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    import vlmfast as vf
    from vlmfast.causal import EvalSet, concept_intervention, load_scores, top_units
    from vlmfast.errors import InputError

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pair = vf.load_pair(args.model).eval()
    scores = load_scores(args.scores)
    ev = EvalSet.from_spec(args.data, pair)
    shared = [c for c in scores.concepts if c in ev.concepts]
    if args.concepts:
        targets = [c.strip() for c in args.concepts.split(",") if c.strip()]
        for c in targets:
            if c not in scores.concepts:
                raise InputError(
                    f"--concepts: {c!r} is not in the scoring result ({list(scores.concepts)})"
                )
            if c not in ev.concepts:
                raise InputError(f"--concepts: {c!r} is not in --data ({list(ev.concepts)})")
    else:
        targets = shared
    if not targets:
        raise InputError("no concept is in both --scores and --data")
    saes: dict[str, Any] = {}
    if args.sae:
        from vlmfast.sae import TopKSAE

        key = str(scores.meta.get("sae") or "sae")
        saes[key] = TopKSAE.load(args.sae)
    hooks = [h.strip() for h in args.hooks.split(",")] if args.hooks else None
    results = []
    rows: list[dict[str, Any]] = []
    for concept in tqdm(targets, desc="intervene", unit="concept", disable=args.no_progress):
        units = top_units(scores, concept, n=args.n, modality=args.modality, hooks=hooks)
        # the vocabulary of the same kind as the target (colors compete with colors)
        kind = ev.kinds[ev.concepts.index(concept)]
        vocab = [c for c in shared if ev.kinds[ev.concepts.index(c)] == kind]
        if concept not in vocab:
            vocab.append(concept)
        r = concept_intervention(
            pair,
            units,
            mode=args.mode,
            ablation=args.ablation,
            alpha=args.alpha,
            eval_data=ev,
            concepts=vocab,
            null=args.null,
            seed=args.seed,
            pvalues=args.null >= 20,
            saes=saes,
            max_rows=args.max_rows,
        )
        results.append(r.to_dict())
        rows.extend(r.rows())
        v = r.verdict
        tqdm.write(
            f"{concept:>12s}: {v['metric']} change {v['target_change']:+.3f} vs others "
            f"{v['others_mean_change']:+.3f}, null mean "
            f"{v['null_mean_change'] if v['null_mean_change'] is not None else float('nan'):+.3f}, "
            f"p={v['pvalue']}, targeted={v['targeted']}"
        )
    meta = {"model": args.model, "data": args.data, "scores": str(args.scores), "n": args.n}
    (out / "intervene.json").write_text(
        json.dumps({"meta": meta, "results": results}, default=float)
    )
    table = write_table(rows, out / "intervene")
    print(f"wrote {out / 'intervene.json'} and {table}")
    return 0
