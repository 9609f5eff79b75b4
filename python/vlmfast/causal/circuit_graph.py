"""Edges of a circuit: the effect of one node on another with the nodes between them frozen.

    edges = vf.causal.circuit_edges(pair, px, tok, corrupt_images=px_c, nodes=nodes)
    # [CircuitEdge(src="image.L0.H1", dst="image.L1.N7", effect=...), ...,
    #  CircuitEdge(src="image.L1.N7", dst="logit", effect=...)]

**Nodes** are heads (``attn.z`` of one head, all positions and batch rows together) and
MLP neurons (``mlp.post`` of one neuron, all positions), as ``CircuitNode``. Node ``u``
is *upstream* of ``v`` when ``u``'s hook comes first in the tower's forward (``attn.z`` of
block ``L`` is before ``mlp.post`` of block ``L``, so a head feeds the neurons of its own
block; heads of one block never feed each other, nor do neurons of one block). The two
towers meet only in the logit, so there are no cross-tower edges except through it.

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
non-circuit components (the residual stream, other heads and neurons). For the gradient
this is a stop-gradient at those nodes. Nodes upstream of ``u`` or downstream of ``v``
do not lie on a ``u -> v`` path, so this freezes exactly the intermediate nodes.

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

Cost (atp): a clean forward, a corrupt forward and backward (``g``), and per tower
``ceil((n_nodes + 1) * rows / max_rows)`` forwards + backwards of a batch replicated once
per target (``s_v`` of each node and the metric): batched VJPs, not one backward per node.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from vlmfast.causal import _backend as backend
from vlmfast.causal._attr_capture import KIND_POINT, Capture, hook, reduce_score
from vlmfast.causal.attribution import DEFAULT_MAX_ROWS, prepare_inputs
from vlmfast.causal.circuit_types import LOGIT, CircuitEdge, CircuitNode
from vlmfast.causal.conventions import TOWERS, check_choice, check_metric_output
from vlmfast.causal.metrics import Metric, metric_space, resolve_metric, similarity
from vlmfast.errors import InputError
from vlmfast.models.hooks import resolve_hooks
from vlmfast.models.interventions import Intervention

__all__ = ["EDGE_KINDS", "EDGE_METHODS", "circuit_edges"]

EDGE_KINDS = ("heads", "neurons")
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
    max_rows: int = DEFAULT_MAX_ROWS,
) -> list[CircuitEdge]:
    """Edges between the circuit ``nodes`` and from each node into the logit.

    Args:
        pair: a HookedPair in eval mode.
        images, texts: clean inputs, image ``i`` paired with caption ``i``.
        corrupt_images, corrupt_texts: corrupted inputs (same shapes; at least one).
        nodes: heads and neurons (``CircuitNode`` with kind ``"heads"`` / ``"neurons"``).
        metric: as in ``vf.causal.attribute``.
        method: ``"atp"`` (gradients, see the module doc) or ``"exact"`` (patching).
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
    node_list = check_nodes(pair, nodes)
    scale, bias = backend.logit_scale_bias(pair)

    def score(img: Tensor, txt: Tensor) -> Tensor:
        return metric_fn(similarity(img, txt, scale, bias, space))

    runs = _base_runs(pair, inputs, node_list, score)
    edges: list[CircuitEdge] = []
    for t in TOWERS:
        tower_nodes = [n for n in node_list if n.tower == t]
        if not tower_nodes:
            continue
        if method == "atp":
            table = _atp_edges(pair, t, inputs[t][0], tower_nodes, runs, score, max_rows)
        else:
            table = _exact_edges(pair, t, inputs[t][0], tower_nodes, runs, score, max_rows)
        edges += _as_edges(pair, tower_nodes, table)
    return edges


# ---- nodes ---------------------------------------------------------------------------


def node_hook(node: CircuitNode) -> str:
    """The hook a head / neuron node lives at (``attn.z`` / ``mlp.post`` of its block)."""
    return hook(node.tower, node.layer, KIND_POINT[node.kind])


def node_order(pair: Any, node: CircuitNode) -> tuple[int, int]:
    """Forward order of a node: (its hook's index in the tower, the component index)."""
    points = pair.tower(node.tower).hook_points()
    return points.index(node_hook(node)), node.index


def check_nodes(pair: Any, nodes: Sequence[CircuitNode]) -> list[CircuitNode]:
    """Distinct, valid head / neuron nodes of ``pair`` in forward order (InputError otherwise)."""
    if isinstance(nodes, CircuitNode) or not nodes:
        raise InputError("nodes must be a non-empty sequence of vf.causal CircuitNode")
    out: dict[str, CircuitNode] = {}
    for n in nodes:
        if not isinstance(n, CircuitNode):
            raise InputError(f"nodes must hold CircuitNode objects, got {type(n).__name__}")
        if n.tower not in TOWERS:
            raise InputError(f"node {n.key}: tower must be one of {list(TOWERS)}")
        if n.kind not in EDGE_KINDS:
            raise InputError(
                f"node {n.key}: kind {n.kind!r} has no edges here; expected one of "
                f"{list(EDGE_KINDS)} (SAE features: vf.causal.feature_circuit)"
            )
        depth = backend.n_layers(pair, n.tower)
        if not 0 <= n.layer < depth:
            raise InputError(f"node {n.key}: layer {n.layer} out of range 0..{depth - 1}")
        size = _n_components(pair, n.tower, n.kind)
        if not 0 <= n.index < size:
            raise InputError(f"node {n.key}: index {n.index} out of range 0..{size - 1}")
        if n.key in out and out[n.key] != n:
            raise InputError(f"two different nodes share the key {n.key!r}")
        out[n.key] = n
    return sorted(out.values(), key=lambda n: (TOWERS.index(n.tower), node_order(pair, n)))


def _n_components(pair: Any, tower: str, kind: str) -> int:
    return backend.n_heads(pair, tower) if kind == "heads" else backend.mlp_width(pair, tower)


def _part(x: Tensor, node: CircuitNode) -> Tensor:
    """The node's slice of its hook value: ``[B, T, dh]`` for a head, ``[B, T]`` for a neuron."""
    return x[:, :, node.index]


def _component_mask(nodes: Sequence[CircuitNode], x: Tensor) -> Tensor:
    """Bool mask broadcastable to ``x`` selecting the nodes' components (axis 2)."""
    size = x.shape[2]
    mask = torch.zeros(size, dtype=torch.bool, device=x.device)
    mask[[n.index for n in nodes]] = True
    shape = [1] * x.dim()
    shape[2] = size
    return mask.view(shape)


# ---- the corrupt run with gradients, the clean run -----------------------------------


@dataclass
class _BaseRuns:
    clean: dict[str, Tensor]
    """Clean values of every node hook."""
    corrupt: dict[str, Tensor]
    """Corrupt values of every node hook."""
    grads: dict[str, Tensor]
    """``dm/d hook`` at the corrupt run (all paths)."""
    embeds: dict[str, Tensor]
    """Corrupt embeddings of both towers (detached)."""
    m_corrupt: float


def _base_runs(
    pair: Any,
    inputs: Mapping[str, tuple[Tensor, Tensor]],
    nodes: Sequence[CircuitNode],
    score: ScoreFn,
) -> _BaseRuns:
    hooks = {t: sorted({node_hook(n) for n in nodes if n.tower == t}) for t in TOWERS}
    clean: dict[str, Tensor] = {}
    with torch.no_grad():
        for t in TOWERS:
            if hooks[t]:
                clean.update(backend.run_cache(pair, t, inputs[t][1], hooks[t]))
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
    grads = {
        n: (g if g is not None else torch.zeros_like(leaves[n])).detach()
        for n, g in zip(leaves, got, strict=True)
    }
    corrupt = {n: v for c in captures.values() for n, v in c.values.items()}
    return _BaseRuns(
        clean=clean,
        corrupt=corrupt,
        grads=grads,
        embeds={t: e.detach() for t, e in embeds.items()},
        m_corrupt=float(m.detach()),
    )


def node_attribution(node: CircuitNode, runs: _BaseRuns) -> float:
    """``A_u = <g_u, delta_u>`` (the AtP score of the node)."""
    name = node_hook(node)
    delta = runs.clean[name] - runs.corrupt[name]
    return float(reduce_score(node.kind, delta, runs.grads[name])[node.index])


# ---- interventions of the replicated runs ------------------------------------------


class _FreezeForGrad(Intervention):
    """At each node hook: records the raw value, detaches the node components, adds a leaf.

    The raw value (with its graph) gives ``s_v``; the detach is the stop-gradient that
    freezes every node for every other node; the zero leaf collects ``d target / d a_u``.
    """

    def __init__(self, by_hook: Mapping[str, Sequence[CircuitNode]]) -> None:
        super().__init__(next(iter(by_hook)))
        self.by_hook = dict(by_hook)
        self.raw: dict[str, Tensor] = {}
        self.leaves: dict[str, Tensor] = {}

    def targets(self, hook_points: Sequence[str]) -> list[str]:
        return resolve_hooks(list(self.by_hook), hook_points)

    def apply(self, name: str, x: Tensor) -> Tensor:
        self.raw[name] = x
        mask = _component_mask(self.by_hook[name], x)
        leaf = torch.zeros_like(x, requires_grad=True)
        self.leaves[name] = leaf
        return torch.where(mask, x.detach(), x) + leaf


class _FreezePatch(Intervention):
    """At each node hook: records the raw value, then sets the node components to ``value``."""

    def __init__(self, values: Mapping[str, tuple[Tensor, Tensor]]) -> None:
        super().__init__(next(iter(values)))
        self.values = dict(values)
        self.raw: dict[str, Tensor] = {}

    def targets(self, hook_points: Sequence[str]) -> list[str]:
        return resolve_hooks(list(self.values), hook_points)

    def apply(self, name: str, x: Tensor) -> Tensor:
        self.raw[name] = x.detach()
        mask, value = self.values[name]
        return torch.where(mask, value.to(dtype=x.dtype), x)


def _by_hook(nodes: Sequence[CircuitNode]) -> dict[str, list[CircuitNode]]:
    out: dict[str, list[CircuitNode]] = {}
    for n in nodes:
        out.setdefault(node_hook(n), []).append(n)
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


Table = dict[tuple[str, str], float]
"""``{(src key, dst key or LOGIT): effect}``."""


def _atp_edges(
    pair: Any,
    tower: str,
    corrupt_in: Tensor,
    nodes: Sequence[CircuitNode],
    runs: _BaseRuns,
    score: ScoreFn,
    max_rows: int,
) -> Table:
    """Batched VJPs: replica 0 of the first chunk backpropagates the metric, replica ``r``
    the scalar ``s_v`` of one target node; every node's leaf then holds each target's
    gradient, dotted with the node's delta."""
    rows = int(corrupt_in.shape[0])
    targets: list[CircuitNode | None] = [None, *nodes]  # None = the logit
    per = _replicas_per_chunk(rows, max_rows)
    by_hook = _by_hook(nodes)
    deltas = {n.key: _part(runs.clean[node_hook(n)] - runs.corrupt[node_hook(n)], n) for n in nodes}
    table: Table = {}
    for start in range(0, len(targets), per):
        chunk = targets[start : start + per]
        r = len(chunk)
        freeze = _FreezeForGrad(by_hook)
        with torch.enable_grad():
            embed = pair.tower(tower).run(_repeat(corrupt_in, r), interventions=[freeze]).embed
            total = embed.new_zeros((), dtype=torch.float32)
            for k, target in enumerate(chunk):
                rows_k = slice(k * rows, (k + 1) * rows)
                if target is None:
                    m = _metric_with(tower, embed[rows_k], runs, score)
                    check_metric_output(m, None, "metric")
                    total = total + m.float()
                else:
                    name = node_hook(target)
                    raw = _part(freeze.raw[name][rows_k], target)
                    g = _part(runs.grads[name], target)
                    total = total + (raw.float() * g.float()).sum()
            names = list(freeze.leaves)
            grads: dict[str, Tensor | None] = dict.fromkeys(names)
            if total.requires_grad:  # False when no target depends on any node
                got = torch.autograd.grad(
                    total, [freeze.leaves[n] for n in names], allow_unused=True
                )
                grads = dict(zip(names, got, strict=True))
        for k, target in enumerate(chunk):
            rows_k = slice(k * rows, (k + 1) * rows)
            dst = LOGIT if target is None else target.key
            for u in nodes:
                if target is not None and not _upstream(pair, u, target):
                    continue
                leaf_grad = grads[node_hook(u)]
                if leaf_grad is None:
                    table[u.key, dst] = 0.0
                    continue
                gu = _part(leaf_grad[rows_k], u)
                table[u.key, dst] = float((gu.float() * deltas[u.key].float()).sum())
    return table


def _exact_edges(
    pair: Any,
    tower: str,
    corrupt_in: Tensor,
    nodes: Sequence[CircuitNode],
    runs: _BaseRuns,
    score: ScoreFn,
    max_rows: int,
) -> Table:
    """Replica ``r`` restores source node ``u_r`` from clean with every other node frozen."""
    rows = int(corrupt_in.shape[0])
    per = _replicas_per_chunk(rows, max_rows)
    by_hook = _by_hook(nodes)
    table: Table = {}
    for start in range(0, len(nodes), per):
        chunk = list(nodes[start : start + per])
        r = len(chunk)
        values: dict[str, tuple[Tensor, Tensor]] = {}
        for name, at_hook in by_hook.items():
            corrupt = runs.corrupt[name]
            value = _repeat(corrupt, r).clone()
            for k, u in enumerate(chunk):
                if node_hook(u) == name:
                    value[k * rows : (k + 1) * rows, :, u.index] = runs.clean[name][:, :, u.index]
            values[name] = (_component_mask(at_hook, corrupt), value)
        patch = _FreezePatch(values)
        with torch.no_grad():
            embed = pair.tower(tower).run(_repeat(corrupt_in, r), interventions=[patch]).embed
            m = _metric_with(tower, embed.view(r, rows, -1), runs, score)
            check_metric_output(m, r, "metric")
        for k, u in enumerate(chunk):
            rows_k = slice(k * rows, (k + 1) * rows)
            for v in nodes:
                if not _upstream(pair, u, v):
                    continue
                name = node_hook(v)
                diff = _part(patch.raw[name][rows_k] - runs.corrupt[name], v)
                g = _part(runs.grads[name], v)
                table[u.key, v.key] = float((diff.float() * g.float()).sum())
            table[u.key, LOGIT] = float(m[k]) - runs.m_corrupt
    return table


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
