"""The nodes and edges a circuit is made of, shared by discovery, edges and drawing.

A node is one component of one tower: a head (``kind="heads"``, index = head), an MLP
neuron (``"neurons"``, index = neuron), an SAE feature (``"features"``, index = latent,
``hook`` names the spliced SAE's hook) or an SAE error node (``"errors"``, index = the
position, ``hook`` as for features). The logit is the sink every circuit ends at.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

NODE_KINDS = ("heads", "neurons", "features", "errors")


@dataclass(frozen=True, order=True)
class CircuitNode:
    """One component: ``(tower, kind, layer, index)``, with the hook for SAE nodes."""

    tower: str
    """``"image"`` or ``"text"``."""
    kind: str
    """One of :data:`NODE_KINDS`."""
    layer: int
    """Block index of the component."""
    index: int
    """Head, neuron or SAE latent index; the position for an error node."""
    hook: str | None = None
    """Full hook name of the SAE (features and error nodes); None otherwise."""

    @property
    def key(self) -> str:
        """A stable, readable identifier, e.g. ``image.L3.H2`` or ``text.L1.N17``."""
        tag = {"heads": "H", "neurons": "N", "features": "F", "errors": "E"}[self.kind]
        return f"{self.tower}.L{self.layer}.{tag}{self.index}"

    def as_tuple(self) -> tuple[str, str, int, int]:
        """Returns ``(tower, kind, layer, index)``: the contract's component tuple."""
        return (self.tower, self.kind, self.layer, self.index)

    def to_dict(self) -> dict[str, Any]:
        """Returns the node as a plain dict (with its ``key``)."""
        return {
            "tower": self.tower,
            "kind": self.kind,
            "layer": self.layer,
            "index": self.index,
            "hook": self.hook,
            "key": self.key,
        }


LOGIT = "logit"
"""Destination key of edges into the pair's score (the two towers meet there)."""

EMBED = {"image": "image.embed", "text": "text.embed"}
"""Keys of each tower's projection into the shared space (``meeting.py``): a drawing's
edges may run node -> embedding -> logit."""


@dataclass(frozen=True)
class CircuitEdge:
    """The effect of node ``src`` on node ``dst`` (a node key or :data:`LOGIT`)."""

    src: str
    """Key of the upstream node."""
    dst: str
    """Key of the downstream node, or ``"logit"``."""
    effect: float
    """Attribution of ``src`` to ``dst`` with the intermediate nodes frozen (signed)."""

    def to_dict(self) -> dict[str, Any]:
        """Returns the edge as a plain dict (``effect`` in metric units)."""
        return {"src": self.src, "dst": self.dst, "effect": self.effect}
