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

from vlmfast.cli import args as A
from vlmfast.tables import write_table


def register(subparsers: Any) -> None:
    from vlmfast.causal.core import INTERVENTION_MAX_ROWS

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
    A.add_model_args(p)
    p.add_argument(
        "--data",
        default="synthetic:test:256",
        type=A.eval_spec,
        help="evaluation pairs: synthetic[:split[:n[:seed[:max_objects]]]]",
    )
    p.add_argument(
        "--scores",
        required=True,
        type=A.existing_dir("a scoring result, vlmfast score --out"),
        help="scoring result DIR (vlmfast score --out)",
    )
    A.add_out_arg(p)
    p.add_argument("--concepts", default=None, help="comma-separated targets (default: all shared)")
    p.add_argument("--n", type=A.positive_int, default=50, help="units per concept")
    p.add_argument("--modality", default=None, choices=A.TOWERS, help="scores modality")
    p.add_argument(
        "--hooks",
        type=A.hook_list,
        default=None,
        help="comma-separated hook globs to pick units from",
    )
    p.add_argument("--mode", default="ablate", choices=["ablate", "steer"])
    p.add_argument("--ablation", default="mean", choices=["mean", "zero"])
    p.add_argument("--alpha", type=float, default=None, help="steering strength (--mode steer)")
    p.add_argument(
        "--null", type=A.nonnegative_int, default=100, help="random unit sets (>= 20 for p-values)"
    )
    A.add_seed_arg(p)
    p.add_argument(
        "--sae",
        default=None,
        type=A.existing_dir("an SAE checkpoint"),
        help="SAE checkpoint dir when the scores are SAE features",
    )
    A.add_max_rows_arg(p, default=INTERVENTION_MAX_ROWS)
    A.add_progress_arg(p)
    p.set_defaults(func=run)


def _targets(requested: str | None, scores: Any, ev: Any) -> list[str]:
    """``--concepts`` (each both scored and in ``--data``), or every shared concept."""
    from vlmfast.causal.interventions.targets import shared_concepts
    from vlmfast.errors import InputError

    if not requested:
        targets = shared_concepts(scores, ev)
    else:
        targets = A.split(requested)
        for c in targets:
            if c not in scores.concepts:
                raise InputError(
                    f"--concepts: {c!r} is not in the scoring result ({list(scores.concepts)})"
                )
            if c not in ev.concepts:
                raise InputError(f"--concepts: {c!r} is not in --data ({list(ev.concepts)})")
    if not targets:
        raise InputError("no concept is in both --scores and --data")
    return targets


def _line(concept: str, v: dict[str, Any]) -> str:
    null = v["null_mean_change"] if v["null_mean_change"] is not None else float("nan")
    return (
        f"{concept:>12s}: {v['metric']} change {v['target_change']:+.3f} vs others "
        f"{v['others_mean_change']:+.3f}, null mean {null:+.3f}, "
        f"p={v['pvalue']}, targeted={v['targeted']}"
    )


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    import vlmfast as vf
    from vlmfast.causal import EvalSet, load_scores
    from vlmfast.causal.interventions.targets import intervene_on_concept

    pair = vf.load_pair(args.model, pretrained=args.pretrained, device=args.device).eval()
    scores = load_scores(args.scores)
    ev = EvalSet.from_spec(args.data, pair)
    targets = _targets(args.concepts, scores, ev)
    saes: dict[str, Any] = {}
    if args.sae:
        from vlmfast.sae import TopKSAE

        saes[str(scores.meta.get("sae") or "sae")] = TopKSAE.load(args.sae)
    results, rows = [], []
    for concept in tqdm(targets, desc="intervene", unit="concept", disable=args.no_progress):
        _, r = intervene_on_concept(
            pair, scores, ev, concept, n=args.n, modality=args.modality, hooks=args.hooks,
            mode=args.mode, ablation=args.ablation, alpha=args.alpha, null=args.null,
            seed=args.seed, pvalues=args.null >= 20, saes=saes, max_rows=args.max_rows,
        )  # fmt: skip
        results.append(r.to_dict())
        rows.extend(r.rows())
        tqdm.write(_line(concept, r.verdict))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"model": args.model, "data": args.data, "scores": str(args.scores), "n": args.n}
    (out / "intervene.json").write_text(
        json.dumps({"meta": meta, "results": results}, default=float)
    )
    table = write_table(rows, out / "intervene")
    print(f"wrote {out / 'intervene.json'} and {table}")
    return 0
