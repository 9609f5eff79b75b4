"""``vlmfast direct-effects``: per-head / per-MLP direct effects on the logit, and the ladder.

    vlmfast direct-effects --model synthetic:tiny --data synthetic:n=300,seed=7 --out de/
    vlmfast direct-effects --model synthetic:tiny --data synthetic:n=300,seed=7 --out de/ \\
        --ladder-classes circle,square,triangle,diamond,cross,star --ladder-template "a {}"

Writes ``DIR/direct_effects.json`` (summary, checks, null), ``DIR/parts.parquet`` (one row
per part and example), ``DIR/heads_<tower>.png`` / ``.svg`` (layers x heads heatmap) and, with
``--ladder-classes``, ``DIR/ladder.parquet`` and ``DIR/ladder.png``. Ladder labels
come from the captions: the one class named in a caption (whole word); records naming
none or several classes are left out of the ladder.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vlmfast.cli import args as A
from vlmfast.cli.outputs import print_skips, skips_json
from vlmfast.errors import InputError
from vlmfast.tables import write_table


def register(subparsers: Any) -> None:
    """Adds the ``direct-effects`` subcommand."""
    p = subparsers.add_parser(
        "direct-effects",
        help="direct effect of every head and MLP on the matched logit (+ ablation ladder)",
        description=(
            "Decomposes each matched logit into the direct contributions of every attention "
            "head and MLP (final LayerNorm scale and MAP pattern frozen from the clean run), "
            "with a mismatched-pairs null; optionally runs the mean-ablation ladder with "
            "zero-shot accuracy."
        ),
    )
    A.add_model_args(p, device_help="torch device of the model")
    A.add_data_arg(p, help="data spec, e.g. synthetic:n=300,seed=7")
    A.add_out_arg(p)
    p.add_argument(
        "--limit", type=A.positive_int, default=256, help="at most this many image-text pairs"
    )
    p.add_argument("--tower", default="image", choices=["image", "text", "both"])
    p.add_argument(
        "--null", type=A.nonnegative_int, default=200, help="mismatched-pair draws (0: no null)"
    )
    A.add_seed_arg(p, help="seed of the null's derangements")
    p.add_argument("--batch-size", type=A.positive_int, default=64)
    p.add_argument(
        "--ladder-classes",
        default=None,
        help="comma-separated class names: run the ablation ladder (zero-shot over these)",
    )
    p.add_argument(
        "--ladder-template", default="a {}", help="prompt template of the ladder's classes"
    )
    p.add_argument("--ladder-path", default="direct", choices=["direct", "total"])
    p.add_argument("--ladder-mode", default="mean", choices=["mean", "zero"])
    p.add_argument(
        "--ladder-cls",
        action="store_true",
        help="add TextSpan's CLS rung after the MLPs (direct path, image towers with CLS)",
    )
    p.add_argument("--no-plot", action="store_true", help="write no figures")
    p.set_defaults(func=run)


def read_pairs(spec: str, limit: int | None) -> tuple[list[Any], list[str]]:
    """Images and captions of the records that have both."""
    from vlmfast.data.pairs import read_pairs as read

    pairs = read(spec, limit)
    return pairs.images, pairs.captions


def labels_from_captions(captions: Sequence[str], classes: Sequence[str]) -> list[int | None]:
    """The index of the one class named in each caption (whole word), else ``None``."""
    pats = [re.compile(rf"\b{re.escape(c)}\b", re.IGNORECASE) for c in classes]
    out: list[int | None] = []
    for cap in captions:
        hits = [k for k, pat in enumerate(pats) if pat.search(cap)]
        out.append(hits[0] if len(hits) == 1 else None)
    return out


def _ladder(pair: Any, px: Any, captions: list[str], args: argparse.Namespace) -> Any:
    """The ablation ladder over the images whose caption names one ``--ladder-classes``."""
    import torch

    from vlmfast.causal.direct import ablation_ladder

    classes = A.split(args.ladder_classes)
    if "{}" not in args.ladder_template:
        raise InputError(f"--ladder-template must contain {{}}, got {args.ladder_template!r}")
    labels = labels_from_captions(captions, classes)
    keep = [i for i, lab in enumerate(labels) if lab is not None]
    if not keep:
        raise InputError(
            f"no caption names exactly one of the --ladder-classes {classes}; the ladder "
            "takes each image's class from its caption"
        )
    ladder = ablation_ladder(
        pair, px[torch.tensor(keep)], [args.ladder_template.format(c) for c in classes],
        [lab for lab in labels if lab is not None], tower="image", mode=args.ladder_mode,
        path=args.ladder_path, batch_size=args.batch_size, cls=args.ladder_cls,
    )  # fmt: skip
    return ladder, {"classes": classes, "template": args.ladder_template}


def _parts(result: Any) -> dict[str, Any]:
    from vlmfast.causal.direct import DirectEffects

    if isinstance(result, DirectEffects):
        return {result.tower: result}
    return {"image": result.image, "text": result.text}


def _write(result: Any, ladder: Any, out: Path, plot: bool) -> list[Path]:
    """The tables and figures (``direct_effects.json`` is written last, by ``run``)."""
    written = [out / "direct_effects.json", write_table(result.table(), out / "parts")]
    for name, de in _parts(result).items() if plot else ():
        for ext in ("png", "svg"):
            de.plot(out / f"heads_{name}.{ext}")
            written.append(out / f"heads_{name}.{ext}")
    if ladder is not None:
        written.append(write_table(ladder.table(), out / "ladder"))
        if plot:
            ladder.plot(out / "ladder.png")
            written.append(out / "ladder.png")
    return written


def _print(parts: dict[str, Any], summary: dict[str, Any], args: argparse.Namespace) -> None:
    import torch

    for name, de in parts.items():
        flat = de.heads.flatten()
        top = torch.argsort(flat.abs(), descending=True)[:5].tolist()
        tops = ", ".join(f"L{k // de.n_heads}h{k % de.n_heads} {float(flat[k]):+.3f}" for k in top)
        print(
            f"{name} tower: {summary['n_pairs']} pairs, mean logit {float(de.logit.mean()):.3f}, "
            f"parts+biases - logit max {de.check():.2e}; top heads: {tops}"
        )
    if "ladder" in summary:
        accs = ", ".join(
            f"{r['name']} {100 * r['accuracy']:.1f}%" for r in summary["ladder"]["rungs"]
        )
        print(f"ladder ({args.ladder_mode}, {args.ladder_path}): {accs}")


def run(args: argparse.Namespace) -> int:
    """Entry point of ``vlmfast direct-effects``."""
    import vlmfast as vf
    from vlmfast.causal.direct import direct_effects
    from vlmfast.data.pairs import read_pairs as read

    pair = vf.load_pair(args.model, pretrained=args.pretrained, device=args.device)
    pairs = read(args.data, args.limit)
    print_skips(pairs.report)
    px, tok = pair.preprocess(pairs.images), pair.tokenize(pairs.captions)
    result = direct_effects(
        pair, px, tok, tower=args.tower, null=args.null, seed=args.seed, batch_size=args.batch_size
    )
    ladder, about = _ladder(pair, px, pairs.captions, args) if args.ladder_classes else (None, {})
    summary: dict[str, Any] = {
        "model": args.model,
        "pretrained": args.pretrained,
        "data": args.data,
        "n_pairs": len(pairs),
        "skipped_records": skips_json(pairs.report),
        "direct_effects": result.to_json(),
    }
    if ladder is not None:
        summary["ladder"] = ladder.to_json() | about
    args.out.mkdir(parents=True, exist_ok=True)
    written = _write(result, ladder, args.out, plot=not args.no_plot)
    (args.out / "direct_effects.json").write_text(json.dumps(summary, indent=2))
    _print(_parts(result), summary, args)
    print("wrote " + ", ".join(str(p) for p in written))
    return 0
