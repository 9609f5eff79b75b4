"""Forward/backward plumbing of attribution patching: which hooks, capture, GradDrop gates.

A *component kind* maps to one hook point per block and the axes its score sums over:

``resid``   ``blocks.L.resid_pre`` [B, T, d]      -> score per position  [T]
``heads``   ``blocks.L.attn.z``    [B, T, H, dh]  -> score per head      [H]
``neurons`` ``blocks.L.mlp.post``  [B, T, F]      -> score per neuron    [F]

Scores sum over the batch: the metric is a mean over the batch, so the sum estimates the
effect of patching the component in every row at once (what ``patch_sweep`` measures).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from vlmfast.models.hooks import resolve_hooks
from vlmfast.models.interventions import Intervention

KIND_POINT = {"resid": "resid_pre", "heads": "attn.z", "neurons": "mlp.post"}
"""Hook point inside block L of each component kind."""

KIND_SWEEP = {"resid": "positions", "heads": "heads", "neurons": "neurons"}
"""The matching ``patch_sweep`` component name."""

_SUM_DIMS = {"resid": (0, 2), "heads": (0, 1, 3), "neurons": (0, 1)}

QK_POINTS = ("attn.q", "attn.k", "attn.v", "attn.pattern")


def hook(tower: str, layer: int, point: str) -> str:
    return f"{tower}.blocks.{layer}.{point}"


def reduce_score(kind: str, delta: Tensor, grad: Tensor) -> Tensor:
    """``sum (delta * grad)`` over everything but the component axis, in float32."""
    return (delta.float() * grad.float()).sum(dim=_SUM_DIMS[kind])


class Capture(Intervention):
    """Adds a zero leaf that requires grad at each named hook and records the value.

    Like ``vf.CaptureGrad`` but for an explicit list of names (one intervention for every
    hook of a tower), with the gradients taken by ``torch.autograd.grad`` so that several
    backward passes (GradDrop) can share one forward.
    """

    def __init__(self, names: Sequence[str]) -> None:
        super().__init__(names[0])
        self.names = list(names)
        self.leaves: dict[str, Tensor] = {}
        self.values: dict[str, Tensor] = {}

    def targets(self, hook_points: Sequence[str]) -> list[str]:
        return resolve_hooks(self.names, hook_points)

    def apply(self, name: str, x: Tensor) -> Tensor:
        leaf = torch.zeros_like(x, requires_grad=True)
        self.leaves[name] = leaf
        self.values[name] = x.detach()
        return x + leaf


class GradGate(Intervention):
    """Leaves the forward unchanged; zeroes the gradient through the hooks in ``drop``.

    Sits on ``attn_out`` and ``mlp_out`` of every block: GradDrop's backward ``l`` drops
    block ``l``'s writes to the residual stream by putting their names in ``drop``.
    """

    def __init__(self, names: Sequence[str]) -> None:
        super().__init__(names[0])
        self.names = list(names)
        self.drop: set[str] = set()

    def targets(self, hook_points: Sequence[str]) -> list[str]:
        return resolve_hooks(self.names, hook_points)

    def apply(self, name: str, x: Tensor) -> Tensor:
        if x.requires_grad:
            x = x.view_as(x)
            x.register_hook(lambda g, n=name: torch.zeros_like(g) if n in self.drop else g)
        return x


def gate_names(tower: str, layers: int) -> list[str]:
    return [hook(tower, layer, p) for layer in range(layers) for p in ("attn_out", "mlp_out")]


def run_tower(
    pair: Any,
    tower: str,
    inputs: Tensor,
    *,
    capture: Capture | None = None,
    cache: Sequence[str] = (),
    gate: GradGate | None = None,
    from_resid: Tensor | None = None,
    tokens: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """One tower's forward: ``(embeddings, cache)``; from ``resid_pre 0`` if ``from_resid``."""
    interventions: list[Intervention] = [iv for iv in (capture, gate) if iv is not None]
    module = pair.tower(tower)
    if from_resid is not None:
        out = module.run_from(
            0, from_resid, tokens=tokens, cache=list(cache) or None, interventions=interventions
        )
    else:
        out = module.run(inputs, cache=list(cache) or None, interventions=interventions or None)
    return out.embed, out.cache
