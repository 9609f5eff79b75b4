"""``vlmfast score``: concept scores of SAE features (or raw units) of one hook of a store."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from vlmfast.cli import args as A


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "score",
        help="exact AUROC concept scores of SAE features or units, per modality",
        description=(
            "Scores every SAE feature (or, without --sae, every unit of the hook) against "
            "every concept of the store's labels, separately for image and text rows. "
            "Writes DIR/scores.zarr (tables) and DIR/summary.json, and prints a summary."
        ),
    )
    p.add_argument("--store", required=True, help="activation store (vlmfast cache output)")
    p.add_argument("--hook", required=True, type=A.hook_name, help="hook name inside the store")
    p.add_argument(
        "--sae",
        default=None,
        type=A.existing_dir("an SAE checkpoint, vlmfast train-sae --out"),
        help="SAE checkpoint dir (TopKSAE.save); omit to score raw units",
    )
    A.add_out_arg(p)
    p.add_argument(
        "--threshold", type=A.probability, default=0.9, help="AUROC threshold of 'selective'"
    )
    p.add_argument("--alpha", type=A.fraction, default=0.05, help="Benjamini-Hochberg FDR")
    p.add_argument("--level", type=A.fraction, default=0.95, help="confidence level of intervals")
    p.add_argument("--top-n", type=A.positive_int, default=16, help="exemplars kept per unit")
    p.add_argument(
        "--tokens",
        default="auto",
        choices=["auto", "pooled", "max", "mean", "all", "patch", "cls"],
        help="pooled rows (an embed hook: the embedding); max/mean over each sample's token "
        "rows; all rows; patch: each image patch row against what its patch shows (object "
        "boxes; text rows not scored); cls: each image's CLS row (text rows not scored); "
        "auto: pooled when the hook has pooled rows, else max",
    )
    p.add_argument(
        "--batch-size", type=A.positive_int, default=8192, help="rows read and encoded per batch"
    )
    p.add_argument("--device", default="cpu", type=A.device, help="device for the SAE encoder")
    p.add_argument(
        "--feature-block",
        type=A.positive_int,
        default=None,
        help="bound memory: spill codes to disk and score this many features per pass",
    )
    A.add_progress_arg(p)
    p.set_defaults(func=run)


def _open_store(path: str) -> Any:
    from vlmfast.store import ActivationStore

    return ActivationStore.open(path)


def _load_sae(path: str, device: str) -> Any:
    from vlmfast.sae import TopKSAE

    return TopKSAE.load(path, device=device)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from vlmfast.scoring import ScoringConfig, format_summary
    from vlmfast.scoring.from_store import score_store

    store = _open_store(args.store)
    sae = _load_sae(args.sae, args.device) if args.sae else None
    cfg = ScoringConfig.from_options(
        threshold=args.threshold, alpha=args.alpha, level=args.level, top_n=args.top_n
    )
    Path(args.out).mkdir(parents=True, exist_ok=True)
    total = int(store.n_rows(args.hook))
    with tqdm(total=total, unit="row", desc=f"score {args.hook}", disable=args.no_progress) as bar:
        result = score_store(
            store,
            args.hook,
            sae=sae,
            tokens=args.tokens,
            batch_size=args.batch_size,
            config=cfg,
            device=args.device,
            progress=bar.update,
            feature_block=args.feature_block,
            spill_dir=str(args.out),
        )
    result.meta.update(
        {"store": str(args.store), "sae": None if args.sae is None else str(args.sae)}
    )
    out = result.save(Path(args.out))
    summary = json.loads((out / "summary.json").read_text())
    meta = summary.get("meta") or {}
    print(f"rows scored: {meta.get('rows', meta.get('aggregation'))} of {args.hook}")
    print(format_summary(summary))
    print(f"wrote {out / 'scores.zarr'} and {out / 'summary.json'}")
    return 0
