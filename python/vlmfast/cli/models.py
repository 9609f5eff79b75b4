"""``vlmfast models``: the model specs vlmfast loads and, with ``--hooks``, a model's hook points.

    vlmfast models                          # sources and example specs
    vlmfast models --all                    # plus every open_clip architecture name
    vlmfast models --hooks open_clip:ViT-B-32
    vlmfast models --hooks hf:/data/siglip-so400m --names   # one full hook name per line

``--hooks`` builds the model (random weights for ``open_clip:``, offline) and runs one
image and one text through it to report each hook's real shape; blocks are folded into
``blocks.{first-last}`` rows because every block has the same hooks and shapes.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from typing import Any

from vlmfast.cli import args as A

_BLOCK = re.compile(r"^(?P<tower>[a-z]+)\.blocks\.(?P<layer>\d+)\.(?P<rest>.+)$")


def register(subparsers: Any) -> None:
    """Adds the ``models`` subcommand."""
    parser = subparsers.add_parser(
        "models",
        help="list supported model specs, or the hook points of one model",
        description="List the model specs vlmfast loads; with --hooks SPEC, list that model's "
        "hook points and shapes (random weights for open_clip:, offline).",
    )
    parser.add_argument(
        "--hooks", metavar="SPEC", type=A.model_spec, help="a model spec, e.g. open_clip:ViT-B-32"
    )
    parser.add_argument(
        "--names",
        action="store_true",
        help="with --hooks: print every full hook name, one per line",
    )
    parser.add_argument(
        "--all", action="store_true", help="also list every open_clip architecture name"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Entry point of ``vlmfast models``."""
    if args.hooks:
        print_hooks(args.hooks, names_only=args.names)
    else:
        print_specs(show_all=args.all)
    return 0


def spec_rows() -> list[tuple[str, str, str]]:
    """(source, spec, notes) rows of the supported model specs."""
    from vlmfast.models.loading.hf import FAMILIES
    from vlmfast.models.registry import OPEN_CLIP_TESTED

    rows = [
        (
            "open_clip",
            f"open_clip:{arch}",
            "parity-tested; pretrained=None (random) | tag | checkpoint",
        )
        for arch in OPEN_CLIP_TESTED
    ]
    rows.append(("open_clip", "open_clip:<arch>", "any open_clip ViT config (see --all)"))
    rows += [
        ("hf", "hf:<local dir | cached hub id>", f"{name}: {text}")
        for name, text in FAMILIES.items()
    ]
    rows.append(
        ("synthetic", "synthetic:tiny", "bundled tiny CLIP trained on the synthetic benchmark")
    )
    return rows


def print_specs(show_all: bool = False) -> None:
    """Prints the spec table (and the open_clip architecture names with ``show_all``)."""
    print(_table(("source", "spec", "notes"), spec_rows()))
    print(
        "\nhf: specs never download: a hub id must already be in the local HF cache, or pass a directory."
    )
    if show_all:
        import open_clip

        print("\nopen_clip architectures:")
        for name in open_clip.list_models():
            print(f"  open_clip:{name}")


def hook_shapes(pair: Any) -> dict[str, tuple[int, ...]]:
    """Shapes of the hooks outside blocks and of block 0, from a forward of 1 image + 1 text."""
    import torch

    names = [n for n in pair.hook_points() if ".blocks." not in n or ".blocks.0." in n]
    cfg = pair.config
    px = torch.zeros(1, 3, cfg.image.image_size, cfg.image.image_size, dtype=pair.dtype)
    tok = torch.zeros(1, cfg.text.context_length, dtype=torch.long)
    tok[0, -1] = cfg.text.vocab_size - 1
    with torch.no_grad():
        out = pair.run(images=px, texts=tok, cache=names)
    return {name: tuple(value.shape) for name, value in out.cache.items()}


def fold_blocks(names: Sequence[str]) -> list[tuple[str, str]]:
    """(display name, representative full name): blocks folded into ``blocks.{0-11}``."""
    layers: dict[tuple[str, str], list[int]] = {}
    order: list[tuple[str, str] | str] = []
    for name in names:
        m = _BLOCK.match(name)
        if m is None:
            order.append(name)
            continue
        key = (m["tower"], m["rest"])
        if key not in layers:
            layers[key] = []
            order.append(key)
        layers[key].append(int(m["layer"]))
    rows: list[tuple[str, str]] = []
    for item in order:
        if isinstance(item, str):
            rows.append((item, item))
            continue
        tower, rest = item
        ls = layers[item]
        span = f"{min(ls)}-{max(ls)}" if len(ls) > 1 else str(ls[0])
        rows.append((f"{tower}.blocks.{{{span}}}.{rest}", f"{tower}.blocks.{min(ls)}.{rest}"))
    return rows


def print_hooks(spec: str, names_only: bool = False) -> None:
    """Prints the hook points of ``spec`` (a compact table, or every name with ``names_only``)."""
    import vlmfast as vf

    pair = vf.load_pair(spec)
    points = pair.hook_points()
    if names_only:
        print("\n".join(points))
        return
    shapes = hook_shapes(pair)
    rows = []
    for shown, rep in fold_blocks(points):
        shape = shapes.get(rep)
        text = "[" + ", ".join(["B", *map(str, shape[1:])]) + "]" if shape else "-"
        rows.append((shown, text))
    cfg = pair.config
    print(f"{spec}: {len(points)} hook points")
    for t in (cfg.image, cfg.text):
        print(
            f"  {t.modality}: {t.layers} blocks, width {t.width}, {t.heads} heads x {t.head_dim}, "
            f"mlp {t.mlp_width} ({t.act}), pool {t.pool}"
        )
    print(_table(("hook point", "shape"), rows))


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)
