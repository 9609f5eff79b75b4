"""The nodes of circuit edges and their sites: reading, freezing and patching them at a hook.

A *site* is the set of circuit nodes at one hook: heads of one ``attn.z`` or neurons of
one ``mlp.post`` (slices along axis 2), or the features and error nodes of one spliced
SAE. ``SiteRun`` runs every site of a tower in one forward, freezing (gradient) or
patching (exact) them; see ``graph.py`` for what the edges are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from vlmfast.causal.attribution.capture import KIND_POINT, hook
from vlmfast.causal.circuits.feature_family import block_of, sae_codes, sae_codes_with_grad
from vlmfast.causal.circuits.features import check_saes
from vlmfast.causal.circuits.types import CircuitNode
from vlmfast.causal.core import backend
from vlmfast.causal.core.conventions import TOWERS
from vlmfast.errors import InputError
from vlmfast.models.hooks import resolve_hooks
from vlmfast.models.interventions import Intervention

EDGE_KINDS = ("heads", "neurons", "features", "errors")


def node_hook(node: CircuitNode) -> str:
    """The hook a node lives at: ``attn.z`` / ``mlp.post`` of its block, or its SAE's hook."""
    if node.kind in KIND_POINT:
        return hook(node.tower, node.layer, KIND_POINT[node.kind])
    return str(node.hook)


def node_order(pair: Any, node: CircuitNode) -> tuple[int, int]:
    """Forward order of a node: (its hook's index in the tower, the component index)."""
    points = pair.tower(node.tower).hook_points()
    return points.index(node_hook(node)), node.index


def check_nodes(
    pair: Any,
    nodes: Sequence[CircuitNode],
    saes: Mapping[str, Any] | None = None,
    tokens: Tensor | None = None,
) -> list[CircuitNode]:
    """Distinct, valid nodes of ``pair`` in forward order (InputError otherwise)."""
    if isinstance(nodes, CircuitNode) or not nodes:
        raise InputError("nodes must be a non-empty sequence of vf.causal CircuitNode")
    out: dict[str, CircuitNode] = {}
    for n in nodes:
        if not isinstance(n, CircuitNode):
            raise InputError(f"nodes must hold CircuitNode objects, got {type(n).__name__}")
        if n.tower not in TOWERS:
            raise InputError(f"node {n.key}: tower must be one of {list(TOWERS)}")
        if n.kind not in EDGE_KINDS:
            raise InputError(f"node {n.key}: kind {n.kind!r} is not one of {list(EDGE_KINDS)}")
        depth = backend.n_layers(pair, n.tower)
        if not 0 <= n.layer < depth:
            raise InputError(f"node {n.key}: layer {n.layer} out of range 0..{depth - 1}")
        size = _n_components(pair, n, saes, tokens)
        if not 0 <= n.index < size:
            raise InputError(f"node {n.key}: index {n.index} out of range 0..{size - 1}")
        if n.key in out and out[n.key] != n:
            raise InputError(f"two different nodes share the key {n.key!r}")
        out[n.key] = n
    return sorted(out.values(), key=lambda n: (TOWERS.index(n.tower), node_order(pair, n)))


def _n_components(
    pair: Any, node: CircuitNode, saes: Mapping[str, Any] | None, tokens: Tensor | None
) -> int:
    if node.kind == "heads":
        return backend.n_heads(pair, node.tower)
    if node.kind == "neurons":
        return backend.mlp_width(pair, node.tower)
    if not saes or node.hook not in saes:
        raise InputError(
            f"node {node.key} is an SAE {node.kind[:-1]} of hook {node.hook!r}: pass "
            f"saes={{{node.hook!r}: sae}}"
        )
    check_saes(pair, {str(node.hook): saes[str(node.hook)]})
    if block_of(str(node.hook)) != (node.tower, node.layer):
        raise InputError(f"node {node.key}: hook {node.hook!r} is not in its tower and layer")
    if node.kind == "features":
        return int(saes[str(node.hook)].n_latents)
    if node.tower == "image":
        return int(pair.config.image.n_tokens)
    return int(tokens.shape[1]) if tokens is not None else int(pair.config.text.context_length)


class Site:
    """The circuit nodes at one hook: how to read their activations, freeze and patch them.

    An activation is a float32 tensor ``[B, ...]`` per node key; ``grads(g_x)`` maps the
    metric's gradient at the hook's value to each node's ``dm/da``.
    """

    def __init__(self, name: str, nodes: Sequence[CircuitNode]) -> None:
        self.hook = name
        self.tower = nodes[0].tower
        self.nodes = list(nodes)

    def acts(self, x: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError

    def grads(self, g_x: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError

    def freeze_grad(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor], list[Tensor]]:
        """``(new hook value, node activations with their graph, gradient leaves)``."""
        raise NotImplementedError

    def leaf_grads(self, grads: Sequence[Tensor | None]) -> dict[str, Tensor | None]:
        """The gradient w.r.t. each node's activation from the leaves' gradients."""
        raise NotImplementedError

    def patch(self, x: Tensor, values: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """``(hook value with every node set to values[key], node activations before)``."""
        raise NotImplementedError


class UnitSite(Site):
    """Heads of one ``attn.z`` or neurons of one ``mlp.post``: slices along axis 2."""

    def _mask(self, x: Tensor) -> Tensor:
        mask = torch.zeros(x.shape[2], dtype=torch.bool, device=x.device)
        mask[[n.index for n in self.nodes]] = True
        shape = [1] * x.dim()
        shape[2] = x.shape[2]
        return mask.view(shape)

    def acts(self, x: Tensor) -> dict[str, Tensor]:
        return {n.key: x[:, :, n.index].float() for n in self.nodes}

    def grads(self, g_x: Tensor) -> dict[str, Tensor]:
        return self.acts(g_x)

    def freeze_grad(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor], list[Tensor]]:
        leaf = torch.zeros_like(x, requires_grad=True)
        raw = {n.key: x[:, :, n.index].float() for n in self.nodes}
        return torch.where(self._mask(x), x.detach(), x) + leaf, raw, [leaf]

    def leaf_grads(self, grads: Sequence[Tensor | None]) -> dict[str, Tensor | None]:
        g = grads[0]
        return {n.key: None if g is None else g[:, :, n.index].float() for n in self.nodes}

    def patch(self, x: Tensor, values: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        raw = self.acts(x.detach())
        out = x.clone()
        for n in self.nodes:
            out[:, :, n.index] = values[n.key].to(x.dtype)
        return out, raw


class SAESite(Site):
    """Features (codes ``z[:, :, f]`` ``[B, T]``) and error nodes (``err[:, p]`` ``[B, d]``)."""

    def __init__(self, name: str, nodes: Sequence[CircuitNode], sae: Any) -> None:
        super().__init__(name, nodes)
        self.sae = sae
        self.features = [n for n in nodes if n.kind == "features"]
        self.errors = [n for n in nodes if n.kind == "errors"]

    def _split(self, z: Tensor, err: Tensor) -> dict[str, Tensor]:
        out = {n.key: z[:, :, n.index] for n in self.features}
        out.update({n.key: err[:, n.index] for n in self.errors})
        return out

    def acts(self, x: Tensor) -> dict[str, Tensor]:
        return self._split(*sae_codes(self.sae, x))

    def grads(self, g_x: Tensor) -> dict[str, Tensor]:
        w = self.sae.W_dec.detach().float()
        g = g_x.float()
        out = {n.key: g @ w[n.index] for n in self.features}
        out.update({n.key: g[:, n.index] for n in self.errors})
        return out

    def _masks(self, z: Tensor, err: Tensor) -> tuple[Tensor, Tensor]:
        fmask = torch.zeros(z.shape[-1], dtype=torch.bool, device=z.device)
        fmask[[n.index for n in self.features]] = True
        pmask = torch.zeros(err.shape[1], dtype=torch.bool, device=z.device)
        pmask[[n.index for n in self.errors]] = True
        return fmask.view(1, 1, -1), pmask.view(1, -1, 1)

    def freeze_grad(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor], list[Tensor]]:
        z, err = sae_codes_with_grad(self.sae, x)
        fmask, pmask = self._masks(z, err)
        leaf_z = torch.zeros_like(z, requires_grad=True)
        leaf_e = torch.zeros_like(err, requires_grad=True)
        z2 = torch.where(fmask, z.detach(), z) + leaf_z
        e2 = torch.where(pmask, err.detach(), err) + leaf_e
        scale = float(self.sae.input_scale)
        w = self.sae.W_dec.detach().float()
        out = z2 @ w + self.sae.b_dec.detach().float() / scale + e2
        return out.to(x.dtype), self._split(z, err), [leaf_z, leaf_e]

    def leaf_grads(self, grads: Sequence[Tensor | None]) -> dict[str, Tensor | None]:
        gz, ge = grads
        out: dict[str, Tensor | None] = {
            n.key: None if gz is None else gz[:, :, n.index] for n in self.features
        }
        out.update({n.key: None if ge is None else ge[:, n.index] for n in self.errors})
        return out

    def patch(self, x: Tensor, values: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        z, err = sae_codes(self.sae, x)
        raw = self._split(z, err)
        z2, e2 = z.clone(), err.clone()
        for n in self.features:
            z2[:, :, n.index] = values[n.key]
        for n in self.errors:
            e2[:, n.index] = values[n.key]
        w = self.sae.W_dec.detach().float()
        return x + ((z2 - z) @ w + (e2 - err)).to(x.dtype), raw


def make_sites(nodes: Sequence[CircuitNode], saes: Mapping[str, Any]) -> list[Site]:
    by_hook: dict[str, list[CircuitNode]] = {}
    for n in nodes:
        by_hook.setdefault(node_hook(n), []).append(n)
    out: list[Site] = []
    for name, members in by_hook.items():
        if members[0].kind in KIND_POINT:
            out.append(UnitSite(name, members))
        else:
            out.append(SAESite(name, members, saes[name]))
    return out


class Stop(Exception):
    """Ends a forward early: every target of the chunk has been read."""


class SiteRun(Intervention):
    """Runs each site's ``freeze_grad`` (``values`` None) or ``patch`` at its hook.

    ``stop_at``: a hook after which the rest of the forward is not needed (the deepest
    target node of an AtP chunk without the metric); ``apply`` raises ``Stop`` there.
    """

    def __init__(
        self,
        sites: Sequence[Site],
        values: Mapping[str, Mapping[str, Tensor]] | None = None,
        stop_at: str | None = None,
    ) -> None:
        super().__init__(sites[0].hook)
        self.sites = {s.hook: s for s in sites}
        self.values = values
        self.stop_at = stop_at
        self.raw: dict[str, Tensor] = {}
        self.leaves: dict[str, list[Tensor]] = {}

    def targets(self, hook_points: Sequence[str]) -> list[str]:
        return resolve_hooks(list(self.sites), hook_points)

    def apply(self, name: str, x: Tensor) -> Tensor:
        site = self.sites[name]
        if self.values is None:
            out, raw, leaves = site.freeze_grad(x)
            self.leaves[name] = leaves
        else:
            out, raw = site.patch(x, self.values[name])
        self.raw.update(raw)
        if name == self.stop_at:
            raise Stop
        return out
