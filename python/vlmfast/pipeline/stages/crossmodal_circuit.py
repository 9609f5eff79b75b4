"""Two-tower circuits for the ``cross-modal`` stage (``vf.causal.find_circuit`` over both towers).

Per concept of ``[crossmodal].two_tower_concepts`` (none: the first of
``[concepts].circuit``; an empty list: off), ``two_tower_pairs`` records whose caption
names it (from ``[data]``) are corrupted with ``both-swap`` (the synthetic scene
re-rendered with the concept changed and the caption taking the same word), and one
search ranks the attention heads of both towers at once (mean ablation, AtP ranking),
with a null of ``two_tower_null`` random orderings. The circuit is drawn as two lanes
meeting in the shared embedding (``two_tower/<concept>.svg``); the drawing's meeting
point (each tower's embedding alone, their interaction) is kept in ``meta.meeting``.

A source the swap cannot corrupt (not synthetic) is recorded as skipped with the reason.
"""

from __future__ import annotations

import json
from typing import Any

from vlmfast.errors import InputError
from vlmfast.pipeline.context import StageContext

FOLDER = "two_tower"
"""Sub-folder of the stage's directory holding the drawings."""


def two_tower_concepts(cfg: Any) -> list[str]:
    """``[crossmodal].two_tower_concepts``, or the first of ``[concepts].circuit``."""
    chosen = cfg.crossmodal.two_tower_concepts
    if chosen is None:
        return list(cfg.concepts.circuit[:1])
    return list(chosen)


def two_tower_circuits(ctx: StageContext) -> dict[str, Any]:
    """``{"circuits": {concept: Circuit.to_json dict}}`` (each with ``meta.run`` as the
    circuit stage writes it), with ``"skipped"``: the reasons of the concepts left out."""
    from vlmfast.causal.core.corruption import concept_corruption
    from vlmfast.pipeline.stages._common import read_pairs, skipped
    from vlmfast.pipeline.stages.crossmodal_text import two_tower_line

    cfg, cm = ctx.config, ctx.config.crossmodal
    concepts = two_tower_concepts(cfg)
    if not concepts:
        return {"skipped": "no concept: [crossmodal] two_tower_concepts and [concepts] circuit"}
    pair = ctx.pair()
    spec = cfg.data.spec
    (ctx.dir / FOLDER).mkdir(exist_ok=True)
    out: dict[str, Any] = {}
    skips: dict[str, str] = {}
    for concept in concepts:
        pairs = read_pairs(
            ctx, spec, cm.two_tower_pairs, f"[crossmodal] two-tower {concept!r}:",
            naming=concept, minimum=2,
        )  # fmt: skip
        try:
            inputs = concept_corruption(pair, pairs.records, concept, "both-swap")
        except InputError as err:  # e.g. a source the image swap cannot re-render
            ctx.log(f"  two-tower circuit for {concept} skipped: {err}")
            skips[concept] = str(err)
            continue
        entry = _one(ctx, pair, inputs, concept)
        entry["meta"]["run"] |= {"pairs": len(pairs.records), "data": spec, **skipped(pairs)}
        ctx.log(two_tower_line(concept, entry, f"{ctx.dir.name}/"))
        out[concept] = entry
    why = "; ".join(f"{c}: {e}" for c, e in skips.items())
    return {"circuits": out} | ({"skipped": why} if skips else {})


def _one(ctx: StageContext, pair: Any, inputs: dict[str, Any], concept: str) -> dict[str, Any]:
    """One concept's two-tower circuit, drawn; its JSON with ``meta.run`` and ``edges``."""
    from vlmfast.causal import find_circuit
    from vlmfast.causal.circuits.draw import draw_circuit

    cm, seed = ctx.config.crossmodal, ctx.config.run.seed
    circuit = find_circuit(
        pair, inputs["images"], inputs["texts"], inputs["corrupt_images"],
        inputs["corrupt_texts"], components=("heads",), towers=("image", "text"),
        corrupt="both", ablation="mean", null=cm.two_tower_null, grid=cm.two_tower_grid,
        n_boot=cm.n_boot, seed=seed, pvalue=cm.two_tower_null >= 20, progress=False,
    )  # fmt: skip
    title = f"two-tower circuit for {concept}"
    edges, files = draw_circuit(circuit, pair, inputs, ctx.dir / FOLDER / concept, title=title)
    circuit.meta["run"] = {
        "concept": concept,
        "corrupt": "both-swap",
        "swap_to": _words(inputs.get("swap")),
        "towers": ["image", "text"],
        "components": ["heads"],
        "ablation": "mean",
        "per_tower": circuit.meta.get("per_tower"),
        "drawing": f"{FOLDER}/{files[1].name}" if files else None,
    }
    entry: dict[str, Any] = json.loads(circuit.to_json())
    entry["edges"] = [e.to_dict() for e in edges]
    return entry


def _words(swap: Any) -> Any:
    """The swap's word, or the distinct words the image swap took (one per record)."""
    if swap is None or isinstance(swap, str):
        return swap
    return list(dict.fromkeys(map(str, swap)))
