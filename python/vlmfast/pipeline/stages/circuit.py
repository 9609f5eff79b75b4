"""Stage ``circuit``: a circuit per concept of ``[concepts].circuit`` (``vf.causal.find_circuit``).

Each concept's clean pairs are records whose caption names it (whole word); the corrupt
inputs follow ``[circuit].corrupt``: ``text-swap`` replaces the concept's word in each
caption by the next concept of its kind (``red`` -> ``green``: the synthetic benchmark's
shapes and colors, else the bundled color vocabulary), ``image-noise`` adds pixel noise,
``image-shift`` gives each image another pair's. ``RUN/circuit/result.json`` =
``{concept: Circuit.to_json dict}`` and ``<concept>.svg`` when drawing is available.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Sequence
from typing import Any

from vlmfast.errors import InputError
from vlmfast.pipeline.runner import StageContext


def _kinds() -> list[list[str]]:
    from vlmfast.data.synthetic import spec

    groups = [list(spec.SHAPES), list(spec.COLORS)]
    try:
        from importlib import resources

        text = resources.files("vlmfast.data.concepts").joinpath("vocab/colors.json").read_text()
        groups.append([c["name"] for c in json.loads(text)["concepts"]])
    except (FileNotFoundError, KeyError, ValueError):
        pass
    return groups


def swap_word(concept: str) -> str:
    """The concept the caption's word is swapped to: the next of its kind."""
    for group in _kinds():
        if concept in group:
            return group[(group.index(concept) + 1) % len(group)]
    raise InputError(
        f"[circuit] corrupt = 'text-swap' needs a concept of a known kind (synthetic shapes "
        f"and colors, or the bundled colors); {concept!r} is neither: use image-noise or image-shift"
    )


def concept_pairs(spec: str, concept: str, n: int, scan: int = 4000) -> list[Any]:
    """Up to ``n`` records whose caption names ``concept`` (among the first ``scan``)."""
    from vlmfast.data import open_source

    pat = re.compile(rf"\b{re.escape(concept)}\b", re.IGNORECASE)
    out = []
    for r in open_source(spec, limit=scan):
        if r.image is not None and r.caption and pat.search(str(r.caption)):
            out.append(r)
            if len(out) == n:
                break
    if len(out) < 2:
        raise InputError(f"[circuit] {concept!r}: data {spec!r} has {len(out)} captions naming it")
    return out


def corrupt_pair_inputs(
    pair: Any, records: Sequence[Any], concept: str, corrupt: str, seed: int, noise_std: float
) -> dict[str, Any]:
    """Clean images/texts and the configured corruption of them."""
    import torch

    px = pair.preprocess([r.image for r in records])
    captions = [str(r.caption) for r in records]
    out: dict[str, Any] = {"images": px, "texts": pair.tokenize(captions)}
    out["corrupt_images"] = out["corrupt_texts"] = None
    if corrupt == "text-swap":
        other = swap_word(concept)
        pat = re.compile(rf"\b{re.escape(concept)}\b", re.IGNORECASE)
        out["corrupt_texts"] = pair.tokenize([pat.sub(other, c) for c in captions])
        out["swap"] = other
    elif corrupt == "image-noise":
        gen = torch.Generator().manual_seed(seed)
        noise = torch.randn(px.shape, generator=gen).to(device=px.device, dtype=px.dtype)
        out["corrupt_images"] = px + noise_std * noise
    else:
        out["corrupt_images"] = px.roll(1, 0)
    return out


def _find_circuit() -> Any:
    try:
        from vlmfast.causal import find_circuit  # type: ignore[attr-defined,unused-ignore]
    except ImportError:
        try:
            from vlmfast.causal.circuit import find_circuit  # type: ignore[import-not-found,no-redef,unused-ignore]
        except ImportError:
            return None
    return find_circuit


def _call(
    fn: Any, pair: Any, inputs: dict[str, Any], concept: str, seed: int, options: dict[str, Any]
) -> Any:
    """``fn`` with the inputs, and the concept and seed where it takes them."""
    params = inspect.signature(fn).parameters
    kwargs: dict[str, Any] = {}
    for name in ("corrupt_images", "corrupt_texts"):
        if name in params:
            kwargs[name] = inputs[name]
    if "seed" in params:
        kwargs["seed"] = seed
    if "concept" in params:
        kwargs["concept"] = concept
    kwargs.update(options)
    return fn(pair, inputs["images"], inputs["texts"], **kwargs)


def _as_dict(circuit: Any) -> dict[str, Any]:
    data = circuit.to_json()
    return json.loads(data) if isinstance(data, str) else dict(data)


def _draw(circuit: Any, path: Any) -> bool:
    """Writes ``path`` (SVG) when the circuit can draw itself; returns whether it did."""
    for name in ("draw", "plot", "to_svg"):
        fn = getattr(circuit, name, None)
        if fn is None:
            continue
        try:
            got = fn(path)
        except Exception:  # drawing is optional: a missing renderer never fails the stage
            return False
        if isinstance(got, str) and got.lstrip().startswith("<"):
            path.write_text(got)
        return bool(path.exists())
    return False


def run(ctx: StageContext) -> dict[str, Any]:
    cfg = ctx.config
    c = cfg.circuit
    concepts = list(cfg.concepts.circuit)
    if not concepts:
        ctx.log("  no [concepts].circuit: nothing to find")
        return {}
    find_circuit = _find_circuit()
    if find_circuit is None:
        raise InputError(
            "the circuit stage needs vf.causal.find_circuit, which is not importable yet; "
            "leave 'circuit' out of [run].stages (or empty [concepts].circuit) to run the rest"
        )
    pair = ctx.pair()
    spec = c.data or cfg.data.spec
    out: dict[str, Any] = {}
    for concept in concepts:
        records = concept_pairs(spec, concept, c.pairs)
        inputs = corrupt_pair_inputs(pair, records, concept, c.corrupt, cfg.run.seed, c.noise_std)
        circuit = _call(find_circuit, pair, inputs, concept, cfg.run.seed, dict(c.options))
        entry = _as_dict(circuit)
        entry.setdefault(
            "corruption",
            {"kind": c.corrupt, "swap_to": inputs.get("swap"), "pairs": len(records), "data": spec},
        )
        drawn = c.draw and _draw(circuit, ctx.dir / f"{concept}.svg")
        entry.setdefault("drawing", f"{concept}.svg" if drawn else None)
        out[concept] = entry
        ctx.log(f"  {concept}: {_describe(entry)}")
    return out


def _describe(entry: dict[str, Any]) -> str:
    parts = []
    for key in ("nodes", "components"):
        if isinstance(entry.get(key), list):
            parts.append(f"{len(entry[key])} {key}")
    for key in ("recovery", "faithfulness", "sparsity"):
        if isinstance(entry.get(key), int | float):
            parts.append(f"{key} {entry[key]:.3f}")
    return ", ".join(parts) or "found"
