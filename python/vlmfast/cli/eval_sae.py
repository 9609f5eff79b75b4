"""``vlmfast eval-sae``: the SAE evaluation suite on stored rows and, with a model, spliced in.

    vlmfast eval-sae --sae saes/l8 --store heldout.zarr --out eval.json
    vlmfast eval-sae --sae saelens:runs/sae --store acts.zarr --held-out 0.2 \\
        --model open_clip:ViT-B-32 --pretrained openai --data coco:captions_val2017.json \\
        --pairs 500 --out eval.json

Reconstruction on the store's rows of the SAE's hook (--rows: default the rows the SAE
trained on), split by token type (cls, patch, token, eot): FVU / explained variance, L0,
cosine, dead / dense / alive fractions, the log10 firing-density histogram. With --model
and --data, downstream on --pairs matched image-caption pairs with the SAE spliced at
its hook: KL of each image's caption distribution from the clean model's, zero-shot
accuracy (clean / spliced / mean-ablated) and loss recovered relative to mean ablation,
computed with the model's logit scale and bias, each with a bootstrap interval. Writes
one JSON file (--out); vf.sae.evaluate_suite is the library call.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from vlmfast.cli import args as A
from vlmfast.sae.rows import ROWS


def _json_out(text: str) -> Path:
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r}: a folder, not a JSON file")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise argparse.ArgumentTypeError(f"{text!r}: {parent} is a file")
            break
    return path


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "eval-sae",
        help="evaluate an SAE: reconstruction on stored rows, downstream with it spliced in",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--sae", required=True, help="SAE: a folder or KIND:PATH (vf.sae.load)")
    p.add_argument(
        "--store", type=A.existing_dir("an activation store"), default=None, help="store folder"
    )
    p.add_argument("--hook", type=A.hook_name, default=None, help="hook (default: the SAE's)")
    p.add_argument("--rows", choices=ROWS, default=None, help="stored rows (default: the SAE's)")
    p.add_argument(
        "--held-out",
        type=A.fraction,
        default=1.0,
        help="evaluate the last fraction of the store's rows (default 1: all)",
    )
    p.add_argument("--max-rows", type=A.positive_int, default=None, help="at most this many rows")
    p.add_argument("--batch-size", type=A.positive_int, default=8192, help="rows per encode")
    p.add_argument("--model", type=A.model_spec, default=None, help="model for downstream metrics")
    p.add_argument("--pretrained", default=None, help="weights tag or local checkpoint path")
    p.add_argument("--device", type=A.device, default="cpu", help="torch device")
    p.add_argument("--data", type=A.data_spec, default=None, help="image-caption pairs (--model)")
    p.add_argument("--pairs", type=A.positive_int, default=256, help="pairs for downstream")
    p.add_argument("--n-boot", type=A.positive_int, default=1000, help="bootstrap resamples")
    p.add_argument(
        "--temperature-free",
        action="store_true",
        help="plain cosine instead of the model's logits (for comparison only)",
    )
    p.add_argument("--out", required=True, type=_json_out, help="JSON file written")
    A.add_seed_arg(p, help="bootstrap seed")
    p.set_defaults(func=run)


def _downstream_inputs(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """``(pair, images, captions)`` of --model / --data, or Nones without --model."""
    from vlmfast.errors import InputError

    if args.model is None:
        if args.data is not None:
            raise InputError("--data gives pairs for downstream metrics: pass --model too")
        return None, None, None
    if args.data is None:
        raise InputError(f"--model {args.model}: pass --data, the image-caption pairs to splice on")
    import vlmfast as vf
    from vlmfast.data.pairs import read_pairs

    pairs = read_pairs(args.data, args.pairs, minimum=2, what="--data")
    pair = vf.load_pair(args.model, pretrained=args.pretrained, device=args.device)
    return pair, pairs.images, pairs.captions


def _open_store(path: Path | None) -> Any:
    if path is None:
        return None
    from vlmfast.store import ActivationStore

    return ActivationStore.open(path)


def run(args: argparse.Namespace) -> int:
    from vlmfast.errors import HookNameError, InputError
    from vlmfast.sae import load
    from vlmfast.sae.downstream import DownstreamConfig
    from vlmfast.sae.eval_suite import SuiteConfig, evaluate_suite

    if args.store is None and args.model is None:
        raise InputError("nothing to evaluate: pass --store (reconstruction) and/or --model")
    try:
        sae = load(args.sae, device=args.device)
    except InputError as err:  # ShapeError included: config and tensors disagree
        raise type(err)(f"--sae {args.sae}: {err}") from None
    cfg = SuiteConfig(
        hook=args.hook,
        rows=args.rows,
        held_out=args.held_out,
        max_rows=args.max_rows,
        batch_size=args.batch_size,
        downstream=DownstreamConfig(
            temperature_free=args.temperature_free, n_boot=args.n_boot, seed=args.seed
        ),
    )
    store = _open_store(args.store)
    pair, images, texts = _downstream_inputs(args)
    try:
        report = evaluate_suite(sae, store=store, pair=pair, images=images, texts=texts, config=cfg)
    except HookNameError as err:
        where = f"--store {args.store}" if store is not None else f"--model {args.model}"
        raise HookNameError(f"{where}: {err} (the SAE {args.sae})") from None
    report.save(args.out)
    for line in summary_lines(report.to_dict()):
        print(line)
    print(f"wrote {args.out}")
    return 0


def summary_lines(result: dict[str, Any]) -> list[str]:
    """A few lines of the suite's headline numbers (from ``SuiteReport.to_dict()``)."""
    lines = [f"SAE on {result['hook']}: {result['sae']}"]
    rec = result.get("reconstruction")
    if rec:
        for name, m in [("all", rec["overall"]), *rec["by_type"].items()]:
            lines.append(
                f"  {name:>12}: rows={m['n_rows']} fvu={_f(m['fvu'])} l0={_f(m['l0_mean'])}"
                f" cos={_f(m['cosine_mean'])} dead={_f(m['dead_fraction'])}"
                f" dense={_f(m['dense_fraction'])}"
            )
    down = result.get("downstream")
    if down:
        lines.append(
            f"  downstream ({down['n_pairs']} pairs, scale {_f(down['logit_scale'])}):"
            f" recovered={_f(down['loss_recovered']['value'])}"
            f" kl={_f(down['kl_spliced']['value'])}"
            f" acc clean/spliced/mean={_f(down['accuracy_clean']['value'])}/"
            f"{_f(down['accuracy_spliced']['value'])}/{_f(down['accuracy_mean_ablated']['value'])}"
        )
    return lines


def _f(x: Any) -> str:
    return "undefined" if x is None else f"{x:.4g}"
