"""Component families: what a circuit is made of, and how its nodes are ablated.

A *circuit* is a set of nodes (:class:`~vlmfast.causal.circuits.types.CircuitNode`); the
metric of a circuit ``m(C)`` is the pair's metric with **every node outside C ablated**.
The engine evaluates many circuits ("variants") at once from a bool keep matrix
``keep[n_variants, n_nodes]`` (True = the node is in the circuit, i.e. left alone).

Component family protocol (the extension point; SAE features plug in here)
--------------------------------------------------------------------------
A family is any object with these members (see :class:`HeadFamily` for an example)::

    tower: str                       # "image" or "text": the tower its nodes live in
    kind: str                        # e.g. "heads", "neurons", "features"
    def nodes(self) -> list[CircuitNode]        # fixed order: keep-matrix columns follow it
    def hooks(self) -> list[str]                # hooks whose values prepare() needs
    def prepare(self, sources: AblationSources) -> None
    def interventions(self, keep: Tensor, n_rows: int) -> list[Intervention]
    # optional: def scores(self, ranking: str) -> Tensor   # [n_nodes], for ranked search

Contract:

* ``nodes()`` are all of this family's tower; ``node.layer`` is the block the node acts
  in, and its interventions must act **only at hooks of that block**
  (``{tower}.blocks.{layer}.*``, resid_pre to resid_post). The engine runs one block at
  a time and shares the computation of variants whose kept sets agree on every layer
  ``<= L`` (a trie over layers), so an intervention at another block's hook would be
  applied to the wrong group of rows.
* ``prepare(sources)`` is called once before any ``interventions`` call, with the values
  of ``hooks()`` at the inputs that define the ablation (see :class:`AblationSources`):
  ``sources.mode`` is ``"zero"``, ``"mean"`` or ``"resample"``; ``sources.reference``
  holds each hook at the batch the mean is taken over (the clean batch unless
  ``reference=`` was given), ``sources.resample`` each hook's per-row replacement source
  ``[n_rows, ...]`` (row ``i`` of the clean batch takes row ``i`` of it). The family
  turns these into its ablated values (e.g. a mean SAE latent activation).
* ``interventions(keep, n_rows)``: ``keep`` is bool ``[n_variants, n_nodes]`` on the CPU
  (columns in ``nodes()`` order); the batch has ``n_variants * n_rows`` rows and variant
  ``v`` owns rows ``[v * n_rows, (v + 1) * n_rows)`` (each a copy of the clean batch).
  Return interventions that, in variant ``v``'s rows, replace every node with
  ``keep[v, j] == False`` by its ablated value and leave everything else **bitwise**
  unchanged (a variant keeping every node must reproduce the clean forward, so that
  ``f(full) = 1``). ``n_variants == 1`` is how the serial reference calls it.
* ``scores(ranking)`` (optional): one attribution magnitude per node for
  ``ranking="atp" | "atp*" | "exact"``; without it, a family can only be searched with
  an explicit order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from vlmfast.causal.circuits.types import CircuitNode
from vlmfast.errors import InputError
from vlmfast.models.interventions import Intervention, PerRow

ABLATIONS = ("zero", "mean", "resample")


@dataclass
class AblationSources:
    """What a family's ablated values are computed from (one tower)."""

    mode: str
    """``"zero"``, ``"mean"`` or ``"resample"``."""
    n_rows: int
    """Rows of the clean batch (and of each variant)."""
    reference: dict[str, Tensor]
    """Hook -> value at the batch the mean is over ``[n_ref, ...]`` (clean unless ``reference=``)."""
    resample: dict[str, Tensor] = field(default_factory=dict)
    """Hook -> per-row replacement ``[n_rows, ...]`` (mode ``resample`` only)."""


@runtime_checkable
class ComponentFamily(Protocol):
    """Structural type of a component family (see the module docstring for the contract)."""

    tower: str
    kind: str

    def nodes(self) -> list[CircuitNode]: ...

    def hooks(self) -> list[str]: ...

    def prepare(self, sources: AblationSources) -> None: ...

    def interventions(self, keep: Tensor, n_rows: int) -> list[Intervention]: ...


class SetAblated(Intervention):
    """Replaces the selected elements (per-row ``PerRow`` masks) by a precomputed value.

    ``value`` is ``[1, ...]`` (zero or a mean: the same for every row) or ``[n, ...]`` (one
    per clean row; the batch is ``n_variants`` copies of those rows, so it is tiled).
    """

    def __init__(self, hook: str, value: Tensor, **sel: Any) -> None:
        super().__init__(hook, **sel)
        self.value = value

    def apply(self, name: str, x: Tensor) -> Tensor:
        v = self.value.to(device=x.device, dtype=x.dtype)
        if v.shape[0] not in (1, x.shape[0]):
            if x.shape[0] % v.shape[0]:
                raise InputError(
                    f"ablated value for {name} has {v.shape[0]} rows; the batch has {x.shape[0]}"
                )
            v = v.repeat(x.shape[0] // v.shape[0], *([1] * (v.dim() - 1)))
        return self._blend(name, x, v.expand_as(x))


class UnitFamily:
    """Heads (``attn.z``, axis 2) or neurons (``mlp.post``, axis 2) of one tower."""

    kind = ""
    point = ""
    selector = ""

    def __init__(self, tower: str, n_layers: int, width: int, layers: Sequence[int] | None = None):
        self.tower = tower
        self.layers = list(range(n_layers)) if layers is None else [int(x) for x in layers]
        self.width = width
        self.values: dict[str, Tensor] = {}

    def hook(self, layer: int) -> str:
        return f"{self.tower}.blocks.{layer}.{self.point}"

    def nodes(self) -> list[CircuitNode]:
        return [
            CircuitNode(self.tower, self.kind, layer, i)
            for layer in self.layers
            for i in range(self.width)
        ]

    def hooks(self) -> list[str]:
        return [self.hook(layer) for layer in self.layers]

    def prepare(self, sources: AblationSources) -> None:
        self.values = {}
        for h in self.hooks():
            ref = sources.reference[h]
            if sources.mode == "zero":
                self.values[h] = torch.zeros_like(ref[:1])
            elif sources.mode == "mean":
                self.values[h] = ref.float().mean(0, keepdim=True).to(ref.dtype)
            else:
                self.values[h] = sources.resample[h]

    def interventions(self, keep: Tensor, n_rows: int) -> list[Intervention]:
        if not self.values:
            raise InputError(f"{type(self).__name__}.prepare() must run before interventions()")
        out: list[Intervention] = []
        k = keep.view(keep.shape[0], len(self.layers), self.width)
        for li, layer in enumerate(self.layers):
            ablated = ~k[:, li]
            if not bool(ablated.any()):
                continue
            mask = ablated.repeat_interleave(n_rows, 0)
            sel = {self.selector: PerRow(mask)}
            out.append(SetAblated(self.hook(layer), self.values[self.hook(layer)], **sel))
        return out


class HeadFamily(UnitFamily):
    """Every attention head of the given layers of one tower, at ``blocks.L.attn.z``."""

    kind = "heads"
    point = "attn.z"
    selector = "heads"


class NeuronFamily(UnitFamily):
    """Every MLP neuron of the given layers of one tower, at ``blocks.L.mlp.post``."""

    kind = "neurons"
    point = "mlp.post"
    selector = "neurons"


__all__ = [
    "ABLATIONS",
    "AblationSources",
    "ComponentFamily",
    "HeadFamily",
    "NeuronFamily",
    "SetAblated",
]
