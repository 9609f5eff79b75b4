"""``vlmfast attribute``: attribution patching of both towers over a few image-caption pairs.

    vlmfast attribute --model synthetic:tiny --data synthetic:n=8,seed=0 --out DIR
    vlmfast attribute --model open_clip:ViT-B-32 --data folder:/imgs --corrupt text-shift \\
        --method atp* --null 4 --exact --out DIR

Writes ``DIR/attribution.json`` (the full result: scores, completeness gaps, null, and
with ``--exact`` the comparison against the exact head sweep), ``DIR/attribution.parquet``
(one row per component) and ``DIR/heatmaps.png`` / ``.svg`` (with matplotlib).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path
from typing import Any

from vlmfast.cli._tables import image_caption_records, write_table
from vlmfast.errors import InputError

CORRUPTIONS = ("image-shift", "image-noise", "text-shift", "text-negative")


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "attribute",
        help="attribution patching (AtP, AtP*, IG) of every head, neuron and position",
        description=(
            "Scores every residual position, head and neuron of both towers by attribution "
            "patching between clean pairs and a corruption of them (denoising: gradient at "
            "the corrupt run, delta = clean - corrupt), on the pair's real score."
        ),
    )
    p.add_argument("--model", required=True, help="model spec, e.g. synthetic:tiny")
    p.add_argument("--pretrained", default=None, help="weights tag or checkpoint (open_clip)")
    p.add_argument("--data", required=True, help="data spec, e.g. synthetic:n=8,seed=0")
    p.add_argument("--limit", type=int, default=8, help="pairs used (the batch)")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument(
        "--corrupt",
        default="image-shift",
        choices=CORRUPTIONS,
        help="image-shift: each image replaced by the next pair's; image-noise: Gaussian "
        "pixel noise (--noise-std); text-shift: the next pair's caption; text-negative: the "
        "record's first hard negative (synthetic data)",
    )
    p.add_argument("--noise-std", type=float, default=1.0, help="image-noise std (pixel units)")
    p.add_argument("--method", default="atp", choices=["atp", "atp*", "ig"])
    p.add_argument("--steps", type=int, default=16, help="IG steps (midpoint rule)")
    p.add_argument("--components", default="resid,heads,neurons", help="comma-separated kinds")
    p.add_argument("--towers", default="image,text", help="comma-separated towers")
    p.add_argument("--metric", default="score", choices=["score", "logit_diff", "alignment"])
    p.add_argument("--direction", default="denoising", choices=["denoising", "noising"])
    p.add_argument("--null", type=int, default=0, help="K random components per layer, exact")
    p.add_argument("--seed", type=int, default=0, help="seed of the null and the noise")
    p.add_argument("--exact", action="store_true", help="also run the exact head sweep and compare")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _records(spec: str, limit: int) -> list[Any]:
    if limit < 2:
        raise InputError(f"--limit must be >= 2 (shift corruptions pair records), got {limit}")
    return image_caption_records(spec, limit, minimum=2)


def _inputs(pair: Any, records: list[Any], args: argparse.Namespace) -> dict[str, Any]:
    return corrupt_inputs(pair, records, args.corrupt, seed=args.seed, noise_std=args.noise_std)


def corrupt_inputs(
    pair: Any, records: list[Any], corrupt: str, *, seed: int = 0, noise_std: float = 1.0
) -> dict[str, Any]:
    """Clean pixels / tokens of ``records`` and their ``corrupt`` counterpart (one of
    :data:`CORRUPTIONS`): ``{images, texts, corrupt_images, corrupt_texts}``."""
    import torch

    px = pair.preprocess([r.image for r in records])
    captions = [r.caption for r in records]
    tok = pair.tokenize(captions)
    out: dict[str, Any] = {"images": px, "texts": tok, "corrupt_images": None}
    out["corrupt_texts"] = None
    if corrupt == "image-shift":
        out["corrupt_images"] = px.roll(1, 0)
    elif corrupt == "image-noise":
        gen = torch.Generator().manual_seed(seed)
        noise = torch.randn(px.shape, generator=gen).to(device=px.device, dtype=px.dtype)
        out["corrupt_images"] = px + noise_std * noise
    elif corrupt == "text-shift":
        out["corrupt_texts"] = tok.roll(1, 0)
    elif corrupt == "text-negative":
        negatives = []
        for r in records:
            neg = r.meta.get("negatives") or {}
            if not neg:
                raise InputError(
                    f"--corrupt text-negative needs hard negatives in the records' meta "
                    f"(synthetic data); record {r.sample_id} has none"
                )
            negatives.append(neg[sorted(neg)[0]])
        out["corrupt_texts"] = pair.tokenize(negatives)
    else:
        raise InputError(f"corrupt must be one of {list(CORRUPTIONS)}, got {corrupt!r}")
    return out


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    import vlmfast as vf
    from vlmfast.causal.attribution_result import json_safe

    args.out.mkdir(parents=True, exist_ok=True)
    stages = 4 + int(args.exact)
    with tqdm(total=stages, unit="step", desc="attribute", disable=args.no_progress) as bar:
        bar.set_postfix_str("load model")
        pair = vf.load_pair(args.model, pretrained=args.pretrained, device=args.device)
        bar.update()
        bar.set_postfix_str("read data")
        records = _records(args.data, args.limit)
        inputs = _inputs(pair, records, args)
        bar.update()
        bar.set_postfix_str(f"{args.method}" + (f" + null {args.null}" if args.null else ""))
        att = vf.causal.attribute(
            pair,
            **inputs,
            components=_split(args.components),
            towers=_split(args.towers),
            method=args.method,
            metric=args.metric,
            direction=args.direction,
            steps=args.steps,
            null=args.null,
            seed=args.seed,
        )
        bar.update()
        comparison = None
        if args.exact:
            bar.set_postfix_str("exact head sweep")
            exact = vf.causal.exact_effects(
                pair,
                **inputs,
                components=("heads",),
                towers=_split(args.towers),
                metric=args.metric,
                direction=args.direction,
            )
            comparison = {f"{t}/{k}": v for (t, k), v in att.compare(exact).items()}
            bar.update()
        bar.set_postfix_str("write")
        data = att.to_dict()
        data["run"] = {
            "model": args.model,
            "data": args.data,
            "pairs": len(records),
            "corrupt": args.corrupt,
            "noise_std": args.noise_std if args.corrupt == "image-noise" else None,
        }
        data["compare_exact_heads"] = comparison
        table = write_table(att.table(), args.out / "attribution")
        data["run"]["table"] = table.name
        (args.out / "attribution.json").write_text(
            json.dumps(json_safe(data), indent=2, allow_nan=False)
        )
        plotted = importlib.util.find_spec("matplotlib") is not None
        if plotted:
            att.plot(args.out / "heatmaps")
        bar.update()
    _summary(att, comparison)
    print(f"wrote {args.out / 'attribution.json'}, {table.name}", end="")
    print(", heatmaps.png/.svg" if plotted else " (no heatmaps: matplotlib is not importable)")
    return 0


def _summary(att: Any, comparison: dict[str, Any] | None) -> None:
    print(
        f"{att.method} ({att.direction}): m(clean) {att.metric_clean:.4g}, m(corrupt) "
        f"{att.metric_corrupt:.4g}; completeness gap "
        + ", ".join(f"{k} {v:+.4g}" for k, v in att.completeness_gap.items())
    )
    for (tower, kind), s in att.scores.items():
        flat = att.ranking((tower, kind)).flatten()
        top = flat.topk(min(3, flat.numel())).indices.tolist()
        width = s.shape[1]
        best = ", ".join(f"L{i // width}.{i % width} {float(s.flatten()[i]):+.3g}" for i in top)
        print(f"  {tower:5s} {kind:7s} top: {best}")
    if comparison:
        for key, c in comparison.items():
            print(
                f"  vs exact {key}: Spearman {c['spearman']:.3f} (|.| {c['spearman_abs']:.3f}), "
                f"top-{int(c['k'])} overlap {c['topk_overlap']:.2f}"
            )
