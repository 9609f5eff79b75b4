"""Reusing the clean prefix: a chunk of edited variants starts at its earliest edited block.

Every variant of a batched chunk runs the same inputs, so below the first block that any
of the chunk's interventions touches, every variant's residual stream is the clean run's.
The clean ``blocks.{L}.resid_pre`` is computed once per tower (one forward of the
unstacked inputs) and each chunk continues from it (``Tower.run_from``), saving ``L``
blocks of every stacked forward. The serial path, the reference, runs every variant whole.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch

from vlmfast.models.interventions import Intervention

_BLOCK_RE = re.compile(r"\.blocks\.(\d+)\.")


def start_layer(pair: Any, tower: str, interventions: Sequence[Intervention]) -> int | None:
    """The earliest block any of ``interventions`` edits: the chunk can start there.

    ``None`` when one edits a hook outside the blocks (the embedding, the head: run
    everything) or there are none.
    """
    points = pair.tower(tower).hook_points()
    layer: int | None = None
    for iv in interventions:
        for name in iv.targets(points):
            found = _BLOCK_RE.search(name)
            if found is None:
                return None
            at = int(found.group(1))
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
