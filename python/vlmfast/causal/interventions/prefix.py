"""Batched variants from the clean prefix: each chunk starts at its earliest edited block.

Every variant of a batched chunk runs the same inputs, so below the first block that any
of the chunk's interventions touches, every variant's residual stream is the clean run's.
The clean ``blocks.{L}.resid_pre`` is computed once per tower (one forward of the
unstacked inputs) and each chunk continues from it (``Tower.run_from``), saving ``L``
blocks of every stacked forward. Off a GPU a chunk holds at most ``CPU_CHUNK_ROWS`` rows.
The serial path, the reference, runs every variant whole.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from vlmfast.causal.core.limits import CPU_CHUNK_ROWS
from vlmfast.causal.core.units import UnitSet, hook_layer
from vlmfast.causal.interventions.edits import batched_interventions
from vlmfast.models.interventions import Intervention


def start_layer(pair: Any, tower: str, interventions: Sequence[Intervention]) -> int | None:
    """The earliest block any of ``interventions`` edits: the chunk can start there.

    ``None`` when one edits a hook outside the blocks (the embedding, the head: run
    everything) or there are none.
    """
    points = pair.tower(tower).hook_points()
    layer: int | None = None
    for iv in interventions:
        for name in iv.targets(points):
            at = hook_layer(name)
            if at is None:
                return None
            layer = at if layer is None else min(layer, at)
    return layer


def clean_prefixes(
    pair: Any, tower: str, inputs: torch.Tensor, layers: set[int]
) -> dict[int, torch.Tensor]:
    """``{L: blocks.{L}.resid_pre}`` of the clean inputs, one forward for all ``layers``."""
    if not layers:
        return {}
    hooks = {L: f"{tower}.blocks.{L}.resid_pre" for L in layers}
    kind = "images" if tower == "image" else "texts"
    out = pair.run(**{kind: inputs}, cache=sorted(hooks.values()), all_rows=True)
    return {L: out.cache[h] for L, h in hooks.items()}


def run_chunk(
    pair: Any,
    tower: str,
    inputs: torch.Tensor,
    copies: int,
    interventions: Sequence[Intervention],
    layer: int | None,
    prefixes: dict[int, torch.Tensor],
) -> torch.Tensor:
    """Embeddings ``[copies * n, e]`` of ``copies`` stacked copies of ``inputs`` under
    ``interventions``, continued from the clean prefix at ``layer`` (None: from the input)."""
    ivs = list(interventions)
    if layer is None:
        if tower == "image":
            stacked = inputs.repeat(copies, 1, 1, 1)
            return pair.run(images=stacked, interventions=ivs).image_embeds
        return pair.run(texts=inputs.repeat(copies, 1), interventions=ivs).text_embeds
    resid = prefixes[layer].repeat(copies, 1, 1)
    tokens = inputs.repeat(copies, 1) if tower == "text" else None
    out = pair.tower(tower).run_from(layer, resid, tokens=tokens, interventions=ivs)
    return out.embed


def variant_embeds(
    pair: Any,
    tower: str,
    inputs: torch.Tensor,
    variants: Sequence[tuple[UnitSet | None, float]],
    clean: torch.Tensor,
    *,
    max_rows: int,
    progress: Callable[[int], Any] | None = None,
    **edits: Any,
) -> torch.Tensor:
    """``[V, n, e]`` embeddings of ``inputs`` under each ``(units or None, alpha)`` variant.

    Variants are stacked ``max_rows`` rows per forward (``CPU_CHUNK_ROWS`` at most off a
    GPU), each chunk from its clean prefix; a chunk that edits nothing in ``tower`` keeps
    ``clean`` (``[n, e]``). ``edits`` go to ``batched_interventions`` (mode, means, ...).
    """
    n_in = int(inputs.shape[0])
    rows = max_rows if pair.device.type == "cuda" else min(max_rows, CPU_CHUNK_ROWS)
    per = max(1, rows // n_in)
    chunks = []
    for start in range(0, len(variants), per):
        chunk = variants[start : start + per]
        ivs = batched_interventions(pair, tower, chunk, n_in, **edits)
        chunks.append((start, len(chunk), ivs, start_layer(pair, tower, ivs)))
    layers = {layer for _, _, ivs, layer in chunks if ivs and layer is not None}
    prefixes = clean_prefixes(pair, tower, inputs, layers)
    out = clean.unsqueeze(0).expand(len(variants), -1, -1).clone()
    for start, size, ivs, layer in chunks:
        if ivs:
            emb = run_chunk(pair, tower, inputs, size, ivs, layer, prefixes)
            out[start : start + size] = emb.view(size, n_in, -1)
        if progress is not None:
            progress(size)
    return out
