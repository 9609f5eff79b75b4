"""Edges of a circuit: the effect of one node on another with the nodes between them frozen.

    edges = vf.causal.circuit_edges(pair, px, tok, corrupt_images=px_c, nodes=nodes)
    # [CircuitEdge(src="image.L0.H1", dst="image.L1.N7", effect=...), ...,
    #  CircuitEdge(src="image.L1.N7", dst="logit", effect=...)]

**Nodes** are heads (``attn.z`` of one head, all positions and batch rows together),
MLP neurons (``mlp.post`` of one neuron, all positions), and, with ``saes={hook: sae}``,
SAE features (the latent's codes at every position) and SAE error nodes (the error
``x - decode(z)`` at one position; see ``vf.causal.find_feature_circuit``), as ``CircuitNode``.
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

from vlmfast.causal.attribution.capture import Capture
from vlmfast.causal.circuits.sites import (
    EDGE_KINDS,
    Site,
    SiteRun,
    Stop,
    check_nodes,
    make_sites,
    node_hook,
    node_order,
)
from vlmfast.causal.circuits.types import LOGIT, CircuitEdge, CircuitNode
from vlmfast.causal.core import backend
from vlmfast.causal.core.conventions import TOWERS, check_choice, check_metric_output
from vlmfast.causal.core.inputs import prepare_inputs
from vlmfast.causal.core.limits import DEFAULT_MAX_ROWS
from vlmfast.causal.core.metrics import Metric, metric_space, resolve_metric, similarity
from vlmfast.errors import InputError

__all__ = ["EDGE_KINDS", "EDGE_METHODS", "check_nodes", "circuit_edges", "node_attributions"]

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
        images: clean images, image ``i`` paired with caption ``i``.
        texts: clean captions, caption ``i`` paired with image ``i``.
        corrupt_images: corrupted images (same shape; this or ``corrupt_texts`` or both).
        corrupt_texts: corrupted captions (same shape; this or ``corrupt_images`` or both).
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
            attribution (``method="atp"``); effects are in metric units.

    Raises:
        InputError: an unknown ``method``, ``max_rows < 1``, or bad nodes or inputs.
    """
    check_choice(method, EDGE_METHODS, "method")
    if not isinstance(max_rows, int) or max_rows < 1:
        raise InputError(f"max_rows must be an int >= 1, got {max_rows!r}")
    metric_fn = resolve_metric(metric)
    space = metric_space(metric_fn)
    inputs, _changed = prepare_inputs(pair, images, texts, corrupt_images, corrupt_texts)
    node_list = check_nodes(pair, nodes, saes, inputs["text"][0])
    sites = make_sites(node_list, saes or {})
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
    sites: Sequence[Site],
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
    sites: Sequence[Site],
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
        run = SiteRun(sites, stop_at=None if last is None else node_hook(last))
        with torch.enable_grad():
            embed: Tensor | None = None
            try:
                x = _repeat(corrupt_in, len(chunk))
                embed = pair.tower(tower).run(x, interventions=[run]).embed
            except Stop:
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
    sites: Sequence[Site],
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
        run = SiteRun(sites, values)
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
