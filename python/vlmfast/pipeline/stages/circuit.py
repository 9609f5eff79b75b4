"""Stage ``circuit``: a circuit per concept of ``[concepts].circuit`` (``vf.causal.find_circuit``).

Each concept's clean pairs are records whose caption names it (whole word); the corrupt
inputs follow ``[circuit].corrupt``: ``text-swap`` replaces the concept's word in each
caption by the next concept of its kind (``red`` -> ``green``: the synthetic benchmark's
shapes, colors and relations, else the bundled color vocabulary), ``image-swap`` re-renders
the synthetic scene with the concept changed, ``both-swap`` does both (the caption takes
the word the image took; the search then spans both towers and the drawing shows them
meeting in the shared embedding), ``image-noise`` adds pixel noise, ``image-shift`` gives
each image another pair's (``vlmfast.causal.core.corruption``). ``RUN/circuit/result.json`` =
``{concept: Circuit.to_json dict}`` (its ``meta.run`` says how it was found),
``<concept>.parquet`` (the faithfulness curve and the ranked components) and, with
``draw``, the circuit's edges drawn as ``<concept>.svg`` / ``.dot``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from vlmfast.pipeline.context import StageContext
from vlmfast.pipeline.stages._common import read_pairs, skipped


def swap_word(concept: str) -> str:
    """The concept the caption's word is swapped to: the next of its kind."""
    from vlmfast.causal.core.corruption import swap_word as swap

    return swap(concept)


def concept_pairs(spec: str, concept: str, n: int, scan: int = 4000) -> list[Any]:
    """Up to ``n`` records whose caption names ``concept`` (among the first ``scan``)."""
    from vlmfast.data.pairs import read_pairs as read

    return read(
        spec, n, what=f"[circuit] {concept!r}: data", naming=concept, scan=scan, minimum=2
    ).records


def corrupt_pair_inputs(
    pair: Any, records: Sequence[Any], concept: str, corrupt: str, seed: int, noise_std: float
) -> dict[str, Any]:
    """Clean images/texts and the configured corruption of them, as ``vlmfast.causal``
    corrupts them (the swaps: ``concept_corruption``)."""
    from vlmfast.causal.core import corrupt_inputs
    from vlmfast.causal.core.corruption import SWAPS, concept_corruption

    if corrupt in SWAPS:
        return concept_corruption(pair, records, concept, corrupt)
    return corrupt_inputs(pair, records, corrupt, seed=seed, noise_std=noise_std)


def candidate_towers(cfg: Any) -> list[str]:
    """``[circuit].towers``, or the tower the corruption changes."""
    c = cfg.circuit
    if c.towers:
        return list(c.towers)
    return {"text-swap": ["text"], "both-swap": ["image", "text"]}.get(c.corrupt, ["image"])


def _draw(
    ctx: StageContext, circuit: Any, pair: Any, inputs: dict[str, Any], concept: str, limit: int
) -> tuple[list[dict[str, Any]], str | None]:
    """Edges among the circuit's ``limit`` highest-ranked nodes (0: all) and into the logit,
    drawn to ``<concept>.svg`` / ``.dot``; returns the edges and the SVG's name."""
    from vlmfast.causal.circuits.draw import draw_circuit

    n = min(len(circuit.nodes), limit or len(circuit.nodes))
    title = f"circuit for {concept}" + (
        f" (its {n} highest-ranked of {len(circuit.nodes)} nodes)" if n < len(circuit.nodes) else ""
    )
    edges, files = draw_circuit(circuit, pair, inputs, ctx.dir / concept, limit=limit, title=title)
    return [e.to_dict() for e in edges], (files[1].name if files else None)


def run(ctx: StageContext) -> dict[str, Any]:
    from vlmfast.causal import find_circuit
    from vlmfast.causal.core.corruption import SIDES
    from vlmfast.tables import write_table

    cfg = ctx.config
    c = cfg.circuit
    concepts = list(cfg.concepts.circuit)
    if not concepts:
        ctx.log("  no [concepts].circuit: nothing to find")
        return {}
    pair = ctx.pair()
    spec = c.data or cfg.data.spec
    towers = candidate_towers(cfg)
    out: dict[str, Any] = {}
    for concept in concepts:
        pairs = read_pairs(ctx, spec, c.pairs, f"[circuit] {concept!r}:", naming=concept, minimum=2)
        records = pairs.records
        inputs = corrupt_pair_inputs(pair, records, concept, c.corrupt, cfg.run.seed, c.noise_std)
        circuit = find_circuit(
            pair, inputs["images"], inputs["texts"], inputs["corrupt_images"],
            inputs["corrupt_texts"], components=c.components, towers=towers, ranking=c.ranking,
            ablation=c.ablation, target=c.target, null=c.null, seed=cfg.run.seed, grid=c.grid,
            pvalue=c.null >= 20, progress=ctx.progress,
            **({"corrupt": SIDES[c.corrupt]} if c.corrupt in SIDES else {}) | c.options,
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
            "per_tower": circuit.meta.get("per_tower"),
            "drawing": drawing,
            "edges_among": min(len(circuit.nodes), c.draw_nodes or len(circuit.nodes)),
            **skipped(pairs),
        }
        write_table(circuit.rows(), ctx.dir / f"{concept}")
        out[concept] = json.loads(circuit.to_json())
        if c.draw:
            out[concept]["edges"] = edges  # among the drawn nodes (meta.run.edges_among)
        p = f", p = {circuit.pvalue:.3g}" if circuit.pvalue is not None else ""
        lo, hi = circuit.faithfulness_interval
        ctx.log(
            f"  {concept} ({c.corrupt}"
            + (f" -> {_swapped(inputs.get('swap'))}" if inputs.get("swap") else "")
            + f"): {circuit.size} of {circuit.n_nodes} components (sparsity "
            f"{circuit.sparsity:.4f}{p} vs {c.null} random orderings); faithfulness "
            f"{circuit.faithfulness:.3f} [{lo:.3f}, {hi:.3f}]"
        )
    return out


def _swapped(swap: Any) -> str:
    """The swap's word, or the distinct words an image swap took (one per record)."""
    return swap if isinstance(swap, str) else "/".join(dict.fromkeys(map(str, swap)))
