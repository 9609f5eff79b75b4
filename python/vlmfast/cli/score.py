"""``vlmfast score``: concept scores of SAE features (or raw units) of one hook of a store."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


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
    p.add_argument("--hook", required=True, help="hook name inside the store")
    p.add_argument(
        "--sae", default=None, help="SAE checkpoint dir (TopKSAE.save); omit to score raw units"
    )
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--threshold", type=float, default=0.9, help="AUROC threshold of 'selective'")
    p.add_argument("--alpha", type=float, default=0.05, help="Benjamini-Hochberg FDR")
    p.add_argument("--level", type=float, default=0.95, help="confidence level of intervals")
    p.add_argument("--top-n", type=int, default=16, help="exemplars kept per unit")
    p.add_argument(
        "--tokens",
        default="auto",
        choices=["auto", "pooled", "max", "mean", "all", "patch"],
        help="pooled rows; max/mean over each sample's token rows; all rows; patch: each "
        "image patch row against what its patch shows (object boxes; text rows not scored); "
        "auto: pooled when the hook has pooled rows, else max",
    )
    p.add_argument("--batch-size", type=int, default=8192, help="rows read and encoded per batch")
    p.add_argument("--device", default="cpu", help="device for the SAE encoder")
    p.add_argument(
        "--feature-block",
        type=int,
        default=None,
        help="bound memory: spill codes to disk and score this many features per pass",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _open_store(path: str) -> Any:
    from vlmfast.store import ActivationStore

    return ActivationStore.open(path)


def _load_sae(path: str, device: str) -> Any:
    from vlmfast.sae import TopKSAE

    return TopKSAE.load(path, device=device)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from vlmfast.scoring import ScoringConfig, SelectivityConfig, format_summary
    from vlmfast.scoring.from_store import score_store

    Path(args.out).mkdir(parents=True, exist_ok=True)
    store = _open_store(args.store)
    sae = _load_sae(args.sae, args.device) if args.sae else None
    cfg = ScoringConfig(
        selectivity=SelectivityConfig(threshold=args.threshold, alpha=args.alpha, level=args.level),
        top_n=args.top_n,
    )
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
    result.meta.update({"store": str(args.store), "sae": args.sae})
    out = result.save(Path(args.out))
    summary = json.loads((out / "summary.json").read_text())
    print(format_summary(summary))
    print(f"wrote {out / 'scores.zarr'} and {out / 'summary.json'}")
    return 0
