"""Running a tower's decomposition in batches, shared by direct effects and the ladder."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from vlmfast.causal.core import backend
from vlmfast.causal.core.conventions import check_eval_mode
from vlmfast.causal.direct.decompose import TowerParts, tower_parts
from vlmfast.errors import InputError


def check_pair(pair: Any) -> None:
    """InputError unless ``pair`` is a HookedPair in eval mode."""
    for attr in ("config", "tower", "hook_points", "logit_scale"):
        if not hasattr(pair, attr):
            raise InputError(
                f"direct_effects needs a vlmfast HookedPair (vf.load_pair(...)); "
                f"got {type(pair).__name__} without .{attr}"
            )
    check_eval_mode(pair, "direct_effects")


def to_cpu(tp: TowerParts) -> TowerParts:
    """Results live on the CPU (the parts of a large batch would crowd a GPU)."""
    src = tp.source_parts.cpu() if tp.source_parts is not None else None
    return TowerParts(tp.tower, tp.names, tp.parts.cpu(), tp.embed.cpu(), tp.layers, tp.heads, src)


def run_parts(
    pair: Any,
    tower: str,
    inputs: Tensor,
    batch_size: int,
    dtype: torch.dtype,
    source_token: int | None = None,
) -> TowerParts:
    """``tower_parts`` of ``inputs`` in batches of ``batch_size``, on the CPU."""
    chunks = [
        to_cpu(
            tower_parts(pair, tower, inputs[s : s + batch_size], dtype, source_token=source_token)
        )
        for s in range(0, inputs.shape[0], batch_size)
    ]
    first = chunks[0]
    if len(chunks) == 1:
        return first
    return TowerParts(
        tower,
        first.names,
        torch.cat([c.parts for c in chunks], dim=1),
        torch.cat([c.embed for c in chunks]),
        first.layers,
        first.heads,
        None
        if first.source_parts is None
        else torch.cat([c.source_parts for c in chunks if c.source_parts is not None], dim=1),
    )


def embeds(pair: Any, tower: str, inputs: Tensor, batch_size: int, dtype: torch.dtype) -> Tensor:
    """The tower's clean embeddings of ``inputs`` in batches, on the CPU in ``dtype``."""
    with torch.no_grad():
        out = [
            backend.embed(pair, tower, inputs[s : s + batch_size]).to("cpu", dtype)
            for s in range(0, inputs.shape[0], batch_size)
        ]
    return torch.cat(out)
