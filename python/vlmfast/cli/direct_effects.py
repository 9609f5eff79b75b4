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

from vlmfast.cli._tables import image_caption_records, write_table
from vlmfast.errors import InputError


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
    p.add_argument("--model", required=True, help="model spec, e.g. synthetic:tiny")
    p.add_argument("--pretrained", default=None, help="weights tag or local checkpoint path")
    p.add_argument("--data", required=True, help="data spec, e.g. synthetic:n=300,seed=7")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--limit", type=int, default=256, help="at most this many image-text pairs")
    p.add_argument("--tower", default="image", choices=["image", "text", "both"])
    p.add_argument("--null", type=int, default=200, help="mismatched-pair draws (0: no null)")
    p.add_argument("--seed", type=int, default=0, help="seed of the null's derangements")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu", help="torch device of the model")
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
    records = image_caption_records(spec, limit)
    return [r.image for r in records], [str(r.caption) for r in records]


def labels_from_captions(captions: Sequence[str], classes: Sequence[str]) -> list[int | None]:
    """The index of the one class named in each caption (whole word), else ``None``."""
    pats = [re.compile(rf"\b{re.escape(c)}\b", re.IGNORECASE) for c in classes]
    out: list[int | None] = []
    for cap in captions:
        hits = [k for k, pat in enumerate(pats) if pat.search(cap)]
        out.append(hits[0] if len(hits) == 1 else None)
    return out


def run(args: argparse.Namespace) -> int:
    """Entry point of ``vlmfast direct-effects``."""
    import torch

    import vlmfast as vf
    from vlmfast.causal.direct_effects import DirectEffects, direct_effects
    from vlmfast.causal.ladder import ablation_ladder

    if args.limit is not None and args.limit < 1:
        raise InputError(f"--limit must be >= 1, got {args.limit}")
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    pair = vf.load_pair(args.model, pretrained=args.pretrained, device=args.device)
    images, captions = read_pairs(args.data, args.limit)
    px = pair.preprocess(images)
    tok = pair.tokenize(captions)
    result = direct_effects(
        pair, px, tok, tower=args.tower, null=args.null, seed=args.seed, batch_size=args.batch_size
    )
    summary: dict[str, Any] = {
        "model": args.model,
        "pretrained": args.pretrained,
        "data": args.data,
        "n_pairs": len(captions),
        "direct_effects": result.to_json(),
    }
    written = [write_table(result.table(), out / "parts")]
    parts = (
        {"image": result.image, "text": result.text}
        if not isinstance(result, DirectEffects)
        else {result.tower: result}
    )
    if not args.no_plot:
        for name, de in parts.items():
            for ext in ("png", "svg"):
                de.plot(out / f"heads_{name}.{ext}")
                written.append(out / f"heads_{name}.{ext}")
    if args.ladder_classes:
        classes = [c.strip() for c in args.ladder_classes.split(",") if c.strip()]
        if "{}" not in args.ladder_template:
            raise InputError(f"--ladder-template must contain {{}}, got {args.ladder_template!r}")
        labels = labels_from_captions(captions, classes)
        keep = [i for i, lab in enumerate(labels) if lab is not None]
        if not keep:
            raise InputError(
                f"no caption names exactly one of the --ladder-classes {classes}; the ladder "
                "takes each image's class from its caption"
            )
        idx = torch.tensor(keep)
        ladder = ablation_ladder(
            pair,
            px[idx],
            [args.ladder_template.format(c) for c in classes],
            [lab for lab in labels if lab is not None],
            tower="image",
            mode=args.ladder_mode,
            path=args.ladder_path,
            batch_size=args.batch_size,
            cls=args.ladder_cls,
        )
        summary["ladder"] = ladder.to_json() | {
            "classes": classes,
            "template": args.ladder_template,
        }
        written.append(write_table(ladder.table(), out / "ladder"))
        if not args.no_plot:
            ladder.plot(out / "ladder.png")
            written.append(out / "ladder.png")
    (out / "direct_effects.json").write_text(json.dumps(summary, indent=2))
    written.insert(0, out / "direct_effects.json")
    for name, de in parts.items():
        flat = de.heads.flatten()
        top = torch.argsort(flat.abs(), descending=True)[:5].tolist()
        tops = ", ".join(f"L{k // de.n_heads}h{k % de.n_heads} {float(flat[k]):+.3f}" for k in top)
        print(
            f"{name} tower: {len(captions)} pairs, mean logit {float(de.logit.mean()):.3f}, "
            f"parts+biases - logit max {de.check():.2e}; top heads: {tops}"
        )
    if "ladder" in summary:
        accs = ", ".join(
            f"{r['name']} {100 * r['accuracy']:.1f}%" for r in summary["ladder"]["rungs"]
        )
        print(f"ladder ({args.ladder_mode}, {args.ladder_path}): {accs}")
    print("wrote " + ", ".join(str(p) for p in written))
    return 0
