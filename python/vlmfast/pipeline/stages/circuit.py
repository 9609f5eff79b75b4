"""Stage ``circuit``: a circuit per concept of ``[concepts].circuit`` (``vf.causal.find_circuit``).

Each concept's clean pairs are records whose caption names it (whole word); the corrupt
inputs follow ``[circuit].corrupt``: ``text-swap`` replaces the concept's word in each
caption by the next concept of its kind (``red`` -> ``green``: the synthetic benchmark's
shapes and colors, else the bundled color vocabulary), ``image-noise`` adds pixel noise,
``image-shift`` gives each image another pair's. ``RUN/circuit/result.json`` =
``{concept: Circuit.to_json dict}`` (its ``meta.run`` says how it was found),
``<concept>.parquet`` (the faithfulness curve and the ranked components) and, with
``draw``, the circuit's edges drawn as ``<concept>.svg`` / ``.dot``.
"""

from __future__ import annotations

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
    """``vf.causal.find_circuit``, or None where it is not importable."""
    try:
        from vlmfast.causal import find_circuit
    except ImportError:
        return None
    return find_circuit


def candidate_towers(cfg: Any) -> list[str]:
    """``[circuit].towers``, or the tower the corruption changes."""
    c = cfg.circuit
    if c.towers:
        return list(c.towers)
    return ["text"] if c.corrupt == "text-swap" else ["image"]


def _draw(
    ctx: StageContext, circuit: Any, pair: Any, inputs: dict[str, Any], concept: str, limit: int
) -> tuple[list[dict[str, Any]], str | None]:
    """Edges among the circuit's ``limit`` highest-ranked nodes (0: all) and into the logit,
    drawn to ``<concept>.svg`` / ``.dot``; returns the edges and the SVG's name."""
    from vlmfast.causal import circuit_edges, circuit_to_dot, circuit_to_svg

    nodes = list(circuit.nodes[:limit] if limit else circuit.nodes)
    if not nodes:
        return [], None
    edges = circuit_edges(
        pair, inputs["images"], inputs["texts"], inputs["corrupt_images"],
        inputs["corrupt_texts"], nodes=nodes,
    )  # fmt: skip
    labels = {n.key: f"rank {r}" for r, n in enumerate(nodes)}
    title = f"circuit for {concept}" + (
        f" (its {len(nodes)} highest-ranked of {len(circuit.nodes)} nodes)"
        if len(nodes) < len(circuit.nodes)
        else ""
    )
    (ctx.dir / f"{concept}.dot").write_text(circuit_to_dot(nodes, edges, labels=labels))
    (ctx.dir / f"{concept}.svg").write_text(circuit_to_svg(nodes, edges, labels, title=title))
    return [e.to_dict() for e in edges], f"{concept}.svg"


def run(ctx: StageContext) -> dict[str, Any]:
    from vlmfast.cli._tables import write_table

    cfg = ctx.config
    c = cfg.circuit
    concepts = list(cfg.concepts.circuit)
    if not concepts:
        ctx.log("  no [concepts].circuit: nothing to find")
        return {}
    find_circuit = _find_circuit()
    if find_circuit is None:
        raise InputError(
            "the circuit stage needs vf.causal.find_circuit, which is not importable; "
            "leave 'circuit' out of [run].stages (or empty [concepts].circuit) to run the rest"
        )
    pair = ctx.pair()
    spec = c.data or cfg.data.spec
    towers = candidate_towers(cfg)
    out: dict[str, Any] = {}
    for concept in concepts:
        records = concept_pairs(spec, concept, c.pairs)
        inputs = corrupt_pair_inputs(pair, records, concept, c.corrupt, cfg.run.seed, c.noise_std)
        circuit = find_circuit(
            pair, inputs["images"], inputs["texts"], inputs["corrupt_images"],
            inputs["corrupt_texts"], components=c.components, towers=towers, ranking=c.ranking,
            ablation=c.ablation, target=c.target, null=c.null, seed=cfg.run.seed, grid=c.grid,
            pvalue=c.null >= 20, progress=ctx.progress, **c.options,
        )  # fmt: skip
        edges, drawing = (
            _draw(ctx, circuit, pair, inputs, concept, c.draw_nodes) if c.draw else ([], None)
        )
        circuit.meta["run"] = {
            "concept": concept,
            "corrupt": c.corrupt,
            "swap_to": inputs.get("swap"),
            "pairs": len(records),
            "data": spec,
            "towers": towers,
            "drawing": drawing,
            "edges_among": min(len(circuit.nodes), c.draw_nodes or len(circuit.nodes)),
        }
        write_table(circuit.rows(), ctx.dir / f"{concept}")
        out[concept] = json.loads(circuit.to_json())
        if c.draw:
            out[concept]["edges"] = edges  # among the drawn nodes (meta.run.edges_among)
        p = f", p = {circuit.pvalue:.3g}" if circuit.pvalue is not None else ""
        lo, hi = circuit.faithfulness_interval
        ctx.log(
            f"  {concept} ({c.corrupt}"
            + (f" -> {inputs['swap']}" if inputs.get("swap") else "")
            + f"): {circuit.size} of {circuit.n_nodes} components (sparsity "
            f"{circuit.sparsity:.4f}{p} vs {c.null} random orderings); faithfulness "
            f"{circuit.faithfulness:.3f} [{lo:.3f}, {hi:.3f}]"
        )
    return out
