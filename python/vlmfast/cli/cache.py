"""``vlmfast cache``: cache activations of both towers over an image-text source into a store."""

from __future__ import annotations

import argparse
import os

from vlmfast.cli import args as A


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "cache",
        help="cache hook activations (images and captions) into a zarr activation store",
        description=(
            "Runs the model over an image-text source and stores the chosen hooks' rows "
            "(image rows from images, text rows from captions) with sample ids, token "
            "positions, modality and concept labels. Killed runs resume when re-run. "
            "Under torchrun (torchrun --nproc-per-node N -m vlmfast cache ...) the ranks "
            "split the batches and merge into one store, identical to a one-process run."
        ),
    )
    A.add_model_args(p)
    A.add_data_arg(p, help="data spec, e.g. synthetic:n=2000,seed=0 or a folder")
    p.add_argument(
        "--hooks",
        required=True,
        type=A.hook_list,
        help="comma-separated hook names or globs; joint.embed for both embeddings",
    )
    p.add_argument("--positions", default="all", choices=["cls", "eot", "pooled", "all", "mean"])
    A.add_out_arg(p, help="store folder (a killed run resumes into it)")
    p.add_argument("--batch-size", type=A.positive_int, default=64)
    p.add_argument(
        "--dtype", default="float32", choices=["float32", "float16", "bfloat16"], help="store dtype"
    )
    p.add_argument("--limit", type=A.positive_int, default=None, help="at most this many records")
    p.add_argument(
        "--concepts",
        default=None,
        help="label vocabularies: coco (COCO's 80 categories + attributes + relations), "
        "default (ImageNet-R 200 + attributes + relations), or bundled names / .json files, "
        "comma-separated",
    )
    p.add_argument(
        "--decode-workers",
        type=A.nonnegative_int,
        default=None,
        help="threads decoding images ahead of the forward (default: one per CPU, at most 8; "
        "0: none); the store does not depend on it",
    )
    p.add_argument("--chunk-rows", type=A.positive_int, default=8192)
    p.add_argument("--compression", default="none", choices=["none", "zstd"])
    p.add_argument(
        "--commit-seconds",
        type=A.nonnegative_float,
        default=10.0,
        help="commit at most this often (0: every batch)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace a store made with other settings"
    )
    p.add_argument("--skip-nonfinite", action="store_true", help="skip and count NaN/Inf rows")
    A.add_progress_arg(p)
    p.set_defaults(func=run, resumable=True)


def run(args: argparse.Namespace) -> int:
    from vlmfast.caching import CacheConfig, run_cache

    cfg = CacheConfig(
        model=args.model,
        data=args.data,
        hooks=args.hooks,
        out=args.out,
        pretrained=args.pretrained,
        positions=args.positions,
        batch_size=args.batch_size,
        device=args.device,
        dtype=args.dtype,
        limit=args.limit,
        decode_workers=args.decode_workers,
        concepts=args.concepts,
        overwrite=args.overwrite,
        skip_nonfinite=args.skip_nonfinite,
        chunk_rows=args.chunk_rows,
        compression=args.compression,
        commit_seconds=args.commit_seconds,
        progress=not args.no_progress,
        crash_at=os.environ.get("VLMFAST_TEST_CRASH_AT"),
    )
    store = run_cache(cfg)
    if os.environ.get("RANK", "0") != "0":
        return 0  # torchrun: rank 0 reports
    for hook in store.hooks:
        print(f"  {hook}: {store.n_rows(hook)} rows x {store.width(hook)}")
    return 0
