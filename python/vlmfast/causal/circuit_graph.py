"""Edges of a circuit: the effect of one node on another with the nodes between them frozen.

    edges = vf.causal.circuit_edges(pair, px, tok, corrupt_images=px_c, nodes=nodes)
    # [CircuitEdge(src="image.L0.H1", dst="image.L1.N7", effect=...), ...,
    #  CircuitEdge(src="image.L1.N7", dst="logit", effect=...)]

**Nodes** are heads (``attn.z`` of one head, all positions and batch rows together),
MLP neurons (``mlp.post`` of one neuron, all positions), and, with ``saes={hook: sae}``,
SAE features (the latent's codes at every position) and SAE error nodes (the error
``x - decode(z)`` at one position; see ``vf.causal.feature_circuit``), as ``CircuitNode``.
Node ``u`` is *upstream* of ``v`` when ``u``'s hook comes first in the tower's forward
(``attn.z`` of block ``L`` is before ``mlp.post`` of block ``L``, so a head feeds the
neurons of its own block; the nodes of one hook never feed each other). The two towers
meet only in the logit, so there are no cross-tower edges except through it.

**Convention** (the project's denoising one, as ``vf.causal.attribute``): gradients are
taken at the corrupt run, ``delta_u = a_clean(u) - a_corrupt(u)``, the metric is the
pair's score (``metric=``) with the other tower at corrupt.

**The scalar of a node.** ``g_v = dm/da_v`` (the full gradient of the metric at the
corrupt run, all paths) is a fixed direction; the node's scalar is
``s_v(a) = <g_v, a_v>`` (summed over rows, positions and the head's ``d_head``), i.e. its
activation projected on its metric gradient. Its change is in metric units and its
attribution is ``A_v = <g_v, delta_v>``, the AtP node score (``vf.causal.attribute``).

**Frozen.** For the edge ``u -> v``, every *other* circuit node is frozen: its value is
held at its corrupt-run value whatever ``u`` does, so ``u`` reaches ``v`` only through
non-circuit components (the residual stream, other heads and neurons, the other latents
and positions of a spliced SAE). For the gradient this is a stop-gradient at those
nodes. Nodes upstream of ``u`` or downstream of ``v`` do not lie on a ``u -> v`` path,
so this freezes exactly the intermediate nodes. At an SAE hook the activation is rebuilt
as ``decode(z') + err'`` from the (partly frozen) codes and errors, so a frozen feature
blocks exactly its own decoder direction and a frozen error node its position's error;
gradients reach an SAE feature through the encoder of its (fixed) top-k selection.

**Edges** (``method="atp"``): ``e(u -> v) = <g_v, J_frozen(v <- u) delta_u>``, the
Jacobian-vector product of ``s_v`` along ``delta_u`` with the other nodes frozen; and the
edge into the logit ``e(u -> logit) = <dm/da_u |_frozen, delta_u>``: ``u``'s direct path to
the metric that avoids every other circuit node. **Completeness**: every path from ``u`` to
the metric either avoids the other circuit nodes or first hits one of them, ``v``, after
which it continues along any path (``g_v``), so exactly (up to float rounding)

    A_u = e(u -> logit) + sum_{v downstream of u} e(u -> v)

the outgoing edges of a node sum to its AtP attribution. Incoming edges of ``v`` sum to
the part of ``A_v`` its upstream circuit nodes explain (linearly); the rest comes from the
inputs through non-circuit components.

``method="exact"`` is the patching reference: ``u`` restored to its clean value in a
corrupt run with every other circuit node frozen (patched to its corrupt value);
``e(u -> v) = s_v(patched) - s_v(corrupt)`` (``v``'s value *before* its own freeze) and
``e(u -> logit) = m(patched) - m(corrupt)``. AtP equals it when the tower is linear in
the nodes and the metric is linear in that tower's embedding (``MatchedScore("dot")``).

Cost: both methods are linear in the number of nodes. ``atp``: a clean forward, a corrupt
forward and backward (``g``), then per tower ``ceil((n_nodes + 1) * rows / max_rows)``
forwards + backwards of a batch replicated once per target (``s_v`` of each node and the
metric): batched VJPs, not one backward per node (feature-circuits' loop). ``exact``: the
same base runs, then ``ceil(n_nodes * rows / max_rows)`` forwards (one replica per
source; one forward reads every target), so it is *cheaper* than ``atp``
(``benches/bench_circuit_edges.py``); ``atp`` is the linearisation whose outgoing edges
add up to the node attributions, the quantity EAP / feature-circuits report.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from vlmfast.causal import _backend as backend
from vlmfast.causal._attr_capture import KIND_POINT, Capture, hook
from vlmfast.causal._feature_family import block_of, sae_codes, sae_codes_with_grad
from vlmfast.causal.attribution import DEFAULT_MAX_ROWS, prepare_inputs
from vlmfast.causal.circuit_types import LOGIT, CircuitEdge, CircuitNode
from vlmfast.causal.conventions import TOWERS, check_choice, check_metric_output
from vlmfast.causal.metrics import Metric, metric_space, resolve_metric, similarity
from vlmfast.errors import InputError
from vlmfast.models.hooks import resolve_hooks
from vlmfast.models.interventions import Intervention

__all__ = ["EDGE_KINDS", "EDGE_METHODS", "circuit_edges"]

EDGE_KINDS = ("heads", "neurons", "features", "errors")
EDGE_METHODS = ("atp", "exact")

ScoreFn = Callable[[Tensor, Tensor], Tensor]


def circuit_edges(
    pair: Any,
    images: Any,
    texts: Any,
    corrupt_images: Any = None,
    corrupt_texts: Any = None,
    *,
    nodes: Sequence[CircuitNode],
    metric: str | Metric = "score",
    method: str = "atp",
    saes: Mapping[str, Any] | None = None,
    max_rows: int = DEFAULT_MAX_ROWS,
) -> list[CircuitEdge]:
    """Edges between the circuit ``nodes`` and from each node into the logit.

    Args:
        pair: a HookedPair in eval mode.
        images, texts: clean inputs, image ``i`` paired with caption ``i``.
        corrupt_images, corrupt_texts: corrupted inputs (same shapes; at least one).
        nodes: ``CircuitNode`` of kind ``"heads"``, ``"neurons"``, ``"features"`` or
            ``"errors"`` (the last two need ``saes``).
        metric: as in ``vf.causal.attribute``.
        method: ``"atp"`` (gradients, see the module doc) or ``"exact"`` (patching).
        saes: ``{hook: TopKSAE}`` of the feature / error nodes (``node.hook``).
        max_rows: the most rows in one replicated forward (targets x batch rows).

    Returns:
        One ``CircuitEdge`` per pair ``u`` upstream of ``v`` in the same tower, then one
        ``u -> "logit"`` per node; in node forward order (``src``, then ``dst``), logit
        edges last for each source. The sum of a node's outgoing effects is its AtP
        attribution (``method="atp"``).
    """
    check_choice(method, EDGE_METHODS, "method")
    if not isinstance(max_rows, int) or max_rows < 1:
        raise InputError(f"max_rows must be an int >= 1, got {max_rows!r}")
    metric_fn = resolve_metric(metric)
    space = metric_space(metric_fn)
    inputs, _changed, _, _ = prepare_inputs(
        pair, images, texts, corrupt_images, corrupt_texts, ("heads",), TOWERS, "denoising"
    )
    node_list = check_nodes(pair, nodes, saes, inputs["text"][0])
    sites = _sites(node_list, saes or {})
    scale, bias = backend.logit_scale_bias(pair)

    def score(img: Tensor, txt: Tensor) -> Tensor:
        return metric_fn(similarity(img, txt, scale, bias, space))

    runs = _base_runs(pair, inputs, sites, score)
    edges: list[CircuitEdge] = []
    for t in TOWERS:
        tower_sites = [s for s in sites if s.tower == t]
        if not tower_sites:
            continue
        run = _atp_edges if method == "atp" else _exact_edges
        table = run(pair, t, inputs[t][0], tower_sites, runs, score, max_rows)
        edges += _as_edges(pair, [n for n in node_list if n.tower == t], table)
    return edges


# ---- nodes ---------------------------------------------------------------------------


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
    from vlmfast.causal.feature_circuit import check_saes

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


# ---- sites: the nodes of one hook ------------------------------------------------------


class _Site:
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


class _UnitSite(_Site):
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


class _SAESite(_Site):
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


def _sites(nodes: Sequence[CircuitNode], saes: Mapping[str, Any]) -> list[_Site]:
    by_hook: dict[str, list[CircuitNode]] = {}
    for n in nodes:
        by_hook.setdefault(node_hook(n), []).append(n)
    out: list[_Site] = []
    for name, members in by_hook.items():
        if members[0].kind in KIND_POINT:
            out.append(_UnitSite(name, members))
        else:
            out.append(_SAESite(name, members, saes[name]))
    return out


# ---- the corrupt run with gradients, the clean run -----------------------------------


@dataclass
class _BaseRuns:
    delta: dict[str, Tensor]
    """Node key -> clean minus corrupt activation."""
    corrupt: dict[str, Tensor]
    """Node key -> corrupt activation."""
    clean: dict[str, Tensor]
    """Node key -> clean activation."""
    grads: dict[str, Tensor]
    """Node key -> ``dm/da`` at the corrupt run (all paths)."""
    embeds: dict[str, Tensor]
    """Corrupt embeddings of both towers (detached)."""
    m_corrupt: float


def _base_runs(
    pair: Any,
    inputs: Mapping[str, tuple[Tensor, Tensor]],
    sites: Sequence[_Site],
    score: ScoreFn,
) -> _BaseRuns:
    hooks = {t: [s.hook for s in sites if s.tower == t] for t in TOWERS}
    clean_x: dict[str, Tensor] = {}
    with torch.no_grad():
        for t in TOWERS:
            if hooks[t]:
                clean_x.update(backend.run_cache(pair, t, inputs[t][1], hooks[t]))
    captures: dict[str, Capture] = {}
    embeds: dict[str, Tensor] = {}
    with torch.enable_grad():
        for t in TOWERS:
            ivs = None
            if hooks[t]:
                captures[t] = Capture(hooks[t])
                ivs = [captures[t]]
            embeds[t] = pair.tower(t).run(inputs[t][0], interventions=ivs).embed
        m = score(embeds["image"], embeds["text"])
        check_metric_output(m, None, "metric")
        leaves = {n: leaf for c in captures.values() for n, leaf in c.leaves.items()}
        got = torch.autograd.grad(m, list(leaves.values()), allow_unused=True)
    g_x = {
        n: (g if g is not None else torch.zeros_like(leaves[n])).detach()
        for n, g in zip(leaves, got, strict=True)
    }
    corrupt_x = {n: v for c in captures.values() for n, v in c.values.items()}
    clean: dict[str, Tensor] = {}
    corrupt: dict[str, Tensor] = {}
    grads: dict[str, Tensor] = {}
    for s in sites:
        clean.update(s.acts(clean_x[s.hook]))
        corrupt.update(s.acts(corrupt_x[s.hook]))
        grads.update(s.grads(g_x[s.hook]))
    return _BaseRuns(
        delta={k: clean[k] - corrupt[k] for k in clean},
        corrupt=corrupt,
        clean=clean,
        grads=grads,
        embeds={t: e.detach() for t, e in embeds.items()},
        m_corrupt=float(m.detach()),
    )


# ---- interventions of the replicated runs ------------------------------------------


class _Stop(Exception):
    """Ends a forward early: every target of the chunk has been read."""


class _SiteRun(Intervention):
    """Runs each site's ``freeze_grad`` (``values`` None) or ``patch`` at its hook.

    ``stop_at``: a hook after which the rest of the forward is not needed (the deepest
    target node of an AtP chunk without the metric); ``apply`` raises ``_Stop`` there.
    """

    def __init__(
        self,
        sites: Sequence[_Site],
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
            raise _Stop
        return out


def _repeat(x: Tensor, r: int) -> Tensor:
    return x.repeat(r, *([1] * (x.dim() - 1)))


def _replicas_per_chunk(rows: int, max_rows: int) -> int:
    return max(1, max_rows // max(rows, 1))


def _metric_with(tower: str, embed: Tensor, runs: _BaseRuns, score: ScoreFn) -> Tensor:
    """The metric with ``tower``'s embeddings ``embed`` and the other tower at corrupt."""
    if tower == "image":
        return score(embed, runs.embeds["text"])
    return score(runs.embeds["image"], embed)


def _dot(a: Tensor, b: Tensor) -> float:
    return float((a.float() * b.float()).sum())


Table = dict[tuple[str, str], float]
"""``{(src key, dst key or LOGIT): effect}``."""


def _atp_edges(
    pair: Any,
    tower: str,
    corrupt_in: Tensor,
    sites: Sequence[_Site],
    runs: _BaseRuns,
    score: ScoreFn,
    max_rows: int,
) -> Table:
    """Batched VJPs: replica ``r`` of a chunk backpropagates the scalar ``s_v`` of one target
    node (or the metric, last); every node's leaf then holds each target's gradient,
    dotted with the node's delta. A chunk without the metric stops its forward at its
    deepest target's hook."""
    rows = int(corrupt_in.shape[0])
    nodes = [n for s in sites for n in s.nodes]
    nodes.sort(key=lambda n: node_order(pair, n))
    # shallow targets first, the metric last: a chunk without it stops at its deepest node
    targets: list[CircuitNode | None] = [*nodes, None]  # None = the logit
    per = _replicas_per_chunk(rows, max_rows)
    table: Table = {}
    for start in range(0, len(targets), per):
        chunk = targets[start : start + per]
        last = chunk[-1]
        run = _SiteRun(sites, stop_at=None if last is None else node_hook(last))
        with torch.enable_grad():
            embed: Tensor | None = None
            try:
                x = _repeat(corrupt_in, len(chunk))
                embed = pair.tower(tower).run(x, interventions=[run]).embed
            except _Stop:
                pass
            total = corrupt_in.new_zeros((), dtype=torch.float32)
            for k, target in enumerate(chunk):
                rows_k = slice(k * rows, (k + 1) * rows)
                if target is None:
                    assert embed is not None
                    m = _metric_with(tower, embed[rows_k], runs, score)
                    check_metric_output(m, None, "metric")
                    total = total + m.float()
                else:
                    raw = run.raw[target.key][rows_k]
                    total = total + (raw.float() * runs.grads[target.key].float()).sum()
            names = [(s, i) for s in sites for i in range(len(run.leaves.get(s.hook, ())))]
            flat = [run.leaves[s.hook][i] for s, i in names]
            got: Sequence[Tensor | None] = [None] * len(flat)
            if total.requires_grad:  # False when no target depends on any node
                got = torch.autograd.grad(total, flat, allow_unused=True)
        per_node: dict[str, Tensor | None] = {}
        for s in sites:
            if s.hook not in run.leaves:  # after the stop: downstream of every target
                per_node.update(dict.fromkeys((n.key for n in s.nodes), None))
                continue
            mine = [g for (site, _), g in zip(names, got, strict=True) if site is s]
            per_node.update(s.leaf_grads(mine))
        for k, target in enumerate(chunk):
            rows_k = slice(k * rows, (k + 1) * rows)
            dst = LOGIT if target is None else target.key
            for u in nodes:
                if target is not None and not _upstream(pair, u, target):
                    continue
                g = per_node[u.key]
                table[u.key, dst] = 0.0 if g is None else _dot(g[rows_k], runs.delta[u.key])
    return table


def _exact_edges(
    pair: Any,
    tower: str,
    corrupt_in: Tensor,
    sites: Sequence[_Site],
    runs: _BaseRuns,
    score: ScoreFn,
    max_rows: int,
) -> Table:
    """Replica ``r`` restores source node ``u_r`` from clean with every other node frozen."""
    rows = int(corrupt_in.shape[0])
    nodes = sorted((n for s in sites for n in s.nodes), key=lambda n: node_order(pair, n))
    per = _replicas_per_chunk(rows, max_rows)
    table: Table = {}
    for start in range(0, len(nodes), per):
        chunk = nodes[start : start + per]
        r = len(chunk)
        values: dict[str, dict[str, Tensor]] = {}
        for s in sites:
            values[s.hook] = {}
            for n in s.nodes:
                value = _repeat(runs.corrupt[n.key], r).clone()
                for k, u in enumerate(chunk):
                    if u.key == n.key:
                        value[k * rows : (k + 1) * rows] = runs.clean[n.key]
                values[s.hook][n.key] = value
        run = _SiteRun(sites, values)
        with torch.no_grad():
            embed = pair.tower(tower).run(_repeat(corrupt_in, r), interventions=[run]).embed
            m = _metric_with(tower, embed.view(r, rows, -1), runs, score)
            check_metric_output(m, r, "metric")
        for k, u in enumerate(chunk):
            rows_k = slice(k * rows, (k + 1) * rows)
            for v in nodes:
                if _upstream(pair, u, v):
                    diff = run.raw[v.key][rows_k] - runs.corrupt[v.key]
                    table[u.key, v.key] = _dot(diff, runs.grads[v.key])
            table[u.key, LOGIT] = float(m[k]) - runs.m_corrupt
    return table


def node_attributions(runs: _BaseRuns) -> dict[str, float]:
    """``A_u = <g_u, delta_u>`` of every node (the AtP score)."""
    return {k: _dot(runs.grads[k], runs.delta[k]) for k in runs.delta}


def _upstream(pair: Any, u: CircuitNode, v: CircuitNode) -> bool:
    """Whether ``u`` can reach ``v``: same tower and an earlier hook (same hook: parallel)."""
    return u.tower == v.tower and node_order(pair, u)[0] < node_order(pair, v)[0]


def _as_edges(pair: Any, nodes: Sequence[CircuitNode], table: Table) -> list[CircuitEdge]:
    out: list[CircuitEdge] = []
    for u in nodes:
        for v in nodes:
            if _upstream(pair, u, v):
                out.append(CircuitEdge(u.key, v.key, table[u.key, v.key]))
        out.append(CircuitEdge(u.key, LOGIT, table[u.key, LOGIT]))
    return out
