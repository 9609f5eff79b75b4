"""Batched evaluation of circuits: component families and the layer-trie ablation engine.

A *circuit* is a set of nodes (:class:`~vlmfast.causal.circuit_types.CircuitNode`); the
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

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from vlmfast.causal._ablated_block import ablated_block
from vlmfast.causal.circuit_types import CircuitNode
from vlmfast.causal.metrics import similarity
from vlmfast.errors import InputError
from vlmfast.models.hooks import HookContext
from vlmfast.models.interventions import Intervention, PerRow

ABLATIONS = ("zero", "mean", "resample")
DEFAULT_MAX_ROWS = 512


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


class _UnitFamily:
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


class HeadFamily(_UnitFamily):
    """Every attention head of the given layers of one tower, at ``blocks.L.attn.z``."""

    kind = "heads"
    point = "attn.z"
    selector = "heads"


class NeuronFamily(_UnitFamily):
    """Every MLP neuron of the given layers of one tower, at ``blocks.L.mlp.post``."""

    kind = "neurons"
    point = "mlp.post"
    selector = "neurons"


# ---------------------------------------------------------------------- the evaluator

ScoreFn = Callable[[Tensor], Tensor]


@dataclass
class Evaluation:
    """Metrics of many circuits: ``metric[v]`` and the similarities ``sim[v, n_img, n_txt]``."""

    metric: Tensor
    sim: Tensor


class CircuitEvaluator:
    """Evaluates ``m(C)`` for many keep masks over the families of both towers.

    The towers meet only in the logit, so each tower runs once per *distinct* kept set of
    its own nodes; within a tower, variants are evaluated in chunks of at most
    ``max_rows`` rows, block by block, and variants whose kept sets agree on every block
    ``<= L`` share block ``L``'s computation (a trie over layers; a group that ablates
    nothing up to ``L`` reuses the clean run). Where a block's only families are heads and
    neurons (the default components), groups with the same kept set at that block run
    together and the ablated heads and neurons are never computed (``_ablated_block``);
    ``sparse=False`` uses the hooked block instead. ``method="serial"`` is the reference:
    one full forward of the pair per variant with the same interventions.
    """

    def __init__(
        self,
        pair: Any,
        inputs: dict[str, Tensor],
        families: Sequence[Any],
        metric: ScoreFn,
        space: str,
        *,
        ablation: str,
        reference: dict[str, Tensor] | None = None,
        resample: dict[str, Tensor] | None = None,
        max_rows: int = DEFAULT_MAX_ROWS,
        sparse: bool = True,
    ) -> None:
        if ablation not in ABLATIONS:
            raise InputError(f"ablation must be one of {list(ABLATIONS)}, got {ablation!r}")
        self.pair = pair
        self.ablation = ablation
        self.inputs = inputs
        self.families = list(families)
        self.metric_fn = metric
        self.space = space
        self.max_rows = max_rows
        self.sparse = sparse
        """Batched blocks whose only ablated nodes are heads / neurons skip computing those
        (``_ablated_block``); False runs the hooked block with ``SetAblated`` masks."""
        self.n_rows = int(inputs["image"].shape[0])
        self.scale, self.bias = _scale_bias(pair)
        self.nodes: list[CircuitNode] = []
        self.columns: dict[str, list[int]] = {"image": [], "text": []}
        self._fam_cols: list[tuple[Any, list[int]]] = []
        for fam in self.families:
            nodes = list(fam.nodes())
            bad = [n for n in nodes if n.tower != fam.tower]
            if bad:
                raise InputError(f"family {fam!r} returned nodes of another tower: {bad[:3]}")
            depth = len(pair.tower(fam.tower).blocks)
            bad = [n for n in nodes if not 0 <= n.layer < depth]
            if bad:
                raise InputError(
                    f"family {fam.tower}/{fam.kind} has nodes outside blocks 0..{depth - 1} "
                    f"of the {fam.tower} tower: {bad[:3]}"
                )
            start = len(self.nodes)
            cols = list(range(start, start + len(nodes)))
            self.nodes += nodes
            self.columns[fam.tower] += cols
            self._fam_cols.append((fam, cols))
        self.layer_of = torch.tensor([n.layer for n in self.nodes], dtype=torch.long)
        self.stats = {
            f"{t}_{k}": 0 for t in ("image", "text") for k in ("rows", "pooled_rows", "loop_rows")
        }
        """Per tower: rows x blocks the batched path ran (``image_rows``), those of them at
        the pooled position alone (``image_pooled_rows``), and what one forward per variant
        would run (``image_loop_rows``)."""
        self._clean: dict[str, dict[str, Tensor]] = {}
        self._clean_embed: dict[str, Tensor] = {}
        with torch.no_grad():
            for tower in ("image", "text"):
                self._prepare_tower(tower, reference, resample)

    # ---- setup ---------------------------------------------------------------------
    def _tower_families(self, tower: str) -> list[tuple[Any, list[int]]]:
        return [(f, c) for f, c in self._fam_cols if f.tower == tower]

    def _prepare_tower(
        self,
        tower: str,
        reference: dict[str, Tensor] | None,
        resample: dict[str, Tensor] | None,
    ) -> None:
        fams = self._tower_families(tower)
        mod = self.pair.tower(tower)
        n_layers = len(mod.blocks)
        resid = [f"{tower}.blocks.{L}.resid_pre" for L in range(n_layers)]
        resid.append(f"{tower}.blocks.{n_layers - 1}.resid_post")
        fam_hooks = list(dict.fromkeys(h for f, _ in fams for h in f.hooks()))
        out = mod.run(self.inputs[tower], cache=list(dict.fromkeys(resid + fam_hooks)))
        self._clean[tower] = {h: out.cache[h] for h in resid}
        self._clean_embed[tower] = out.embed
        if not fams:
            return
        ref_cache = {h: out.cache[h] for h in fam_hooks}
        if reference is not None and reference.get(tower) is not None:
            ref_cache = mod.run(reference[tower], cache=fam_hooks).cache
        res_cache: dict[str, Tensor] = {}
        if resample is not None and resample.get(tower) is not None:
            res_cache = mod.run(resample[tower], cache=fam_hooks).cache
        sources = AblationSources(self.ablation, self.n_rows, ref_cache, res_cache)
        for fam, _ in fams:
            fam.prepare(sources)

    # ---- evaluation ------------------------------------------------------------------
    def evaluate(self, keep: Tensor, method: str = "batched") -> Evaluation:
        """Metric and similarities of every variant (row) of ``keep`` ``[V, n_nodes]``."""
        keep = torch.as_tensor(keep, dtype=torch.bool).cpu()
        if keep.dim() != 2 or keep.shape[1] != len(self.nodes):
            raise InputError(
                f"keep must be bool [n_variants, {len(self.nodes)}], got {tuple(keep.shape)}"
            )
        if method not in ("batched", "serial"):
            raise InputError(f"method must be 'batched' or 'serial', got {method!r}")
        with torch.no_grad():
            if method == "serial":
                sims = [self._serial_one(keep[v : v + 1]) for v in range(keep.shape[0])]
                sim = torch.stack(sims) if sims else torch.empty(0, self.n_rows, self.n_rows)
            else:
                sim = self._batched(keep)
            metric = self.metric_fn(sim)
        return Evaluation(metric.detach().double().cpu(), sim.detach().double().cpu())

    def _serial_one(self, keep: Tensor) -> Tensor:
        ivs: list[Intervention] = []
        for fam, cols in self._fam_cols:
            ivs += fam.interventions(keep[:, cols], self.n_rows)
        out = self.pair.run(
            images=self.inputs["image"], texts=self.inputs["text"], interventions=ivs or None
        )
        return similarity(out.image_embeds, out.text_embeds, self.scale, self.bias, self.space)

    def _batched(self, keep: Tensor) -> Tensor:
        for tower in ("image", "text"):
            depth = len(self.pair.tower(tower).blocks)
            self.stats[f"{tower}_loop_rows"] += keep.shape[0] * self.n_rows * depth
        embeds: dict[str, Tensor] = {}
        inverse: dict[str, Tensor] = {}
        for tower in ("image", "text"):
            cols = self.columns[tower]
            if not cols:
                embeds[tower] = self._clean_embed[tower].unsqueeze(0)
                inverse[tower] = torch.zeros(keep.shape[0], dtype=torch.long)
                continue
            # distinct kept sets, sorted by their early layers first, so that a chunk holds
            # sets that share long prefixes (more trie sharing)
            by_layer = torch.argsort(self.layer_of[cols], stable=True)
            uniq, inv = torch.unique(keep[:, cols][:, by_layer], dim=0, return_inverse=True)
            patterns = torch.empty_like(uniq)
            patterns[:, by_layer] = uniq
            per_chunk = max(1, self.max_rows // self.n_rows)
            parts = [
                self._run_tower(tower, patterns[s : s + per_chunk])
                for s in range(0, patterns.shape[0], per_chunk)
            ]
            embeds[tower] = torch.cat(parts)
            inverse[tower] = inv
        img = embeds["image"][inverse["image"]]
        txt = embeds["text"][inverse["text"]]
        return similarity(img, txt, self.scale, self.bias, self.space)

    def _run_tower(self, tower: str, patterns: Tensor) -> Tensor:
        """Embeddings ``[u, n, e]`` of one tower for ``u`` distinct kept sets of its nodes.

        Blocks after a variant's last *position-mixing* block (one with a kept head; an
        ablated head's output does not depend on the row) run at the pooled token only:
        the block at that last mixing layer takes keys and values from every position and
        returns the pooled row, later ones see that row alone. Towers that pool by mean or
        MAP, and ``sparse=False``, run every position.
        """
        mod = self.pair.tower(tower)
        n_layers = len(mod.blocks)
        cols = self.columns[tower]
        layer_of = self.layer_of[cols]
        local = {c: i for i, c in enumerate(cols)}  # node column -> column of `patterns`
        fams = [(f, [local[c] for c in fc]) for f, fc in self._tower_families(tower)]
        n = self.n_rows
        clean = self._clean[tower]
        plans = [
            self._sparse_plan(fams, layer_of, layer) if self.sparse else None
            for layer in range(n_layers)
        ]
        first = clean[f"{tower}.blocks.0.resid_pre"]
        tokens = self.inputs["text"] if tower == "text" else None
        pos = mod.pooled_positions(first, tokens) if self.sparse else None
        last_mix = _last_mixing_layer(patterns, plans, mod, n_layers if pos is None else None)
        # group[p]: the trie node of pattern p after the blocks run so far (-1 = clean);
        # states[g]: that node's block output, [n, T, d], or [n, 1, d] at the pooled rows
        group = torch.full((patterns.shape[0],), -1, dtype=torch.long)
        states: list[Tensor] = []
        pooled: list[bool] = []
        for layer in range(n_layers):
            upto = patterns[:, layer_of <= layer]
            is_clean = upto.all(1)
            if bool(is_clean.all()):
                continue
            key = torch.cat([group.unsqueeze(1) + 1, upto.long()], 1)
            uniq, inv = torch.unique(key[~is_clean], dim=0, return_inverse=True)
            # representative pattern of each new group, its parent, its patterns' last mixing
            idx = torch.nonzero(~is_clean).flatten()
            reps = torch.zeros(uniq.shape[0], dtype=torch.long)
            reps[inv] = idx
            parent = group[reps].tolist()
            mix = torch.full((uniq.shape[0],), -1, dtype=torch.long)
            mix.scatter_reduce_(0, inv, last_mix[idx], reduce="amax")
            x_clean = clean[f"{tower}.blocks.{layer}.resid_pre"]
            modes = []
            for g, p in enumerate(parent):
                if int(mix[g]) > layer:
                    modes.append("full")
                elif p >= 0 and pooled[p]:
                    modes.append("pooled")
                else:
                    modes.append("rows")
            new_states: list[Tensor] = [x_clean] * uniq.shape[0]
            for mode in ("full", "rows", "pooled"):
                gs = [g for g, m in enumerate(modes) if m == mode]
                if not gs:
                    continue
                x = torch.cat([x_clean if parent[g] < 0 else states[parent[g]] for g in gs])
                y = self._block(
                    mod, layer, x, patterns[reps[gs]], plans[layer], fams, layer_of,
                    None if mode == "full" else pos, mode == "pooled",
                )  # fmt: skip
                for j, g in enumerate(gs):
                    new_states[g] = y[j * n : (j + 1) * n]
                self.stats[f"{tower}_rows"] += int(x.shape[0])
                if mode != "full":
                    self.stats[f"{tower}_pooled_rows"] += int(x.shape[0])
            states = new_states
            pooled = [m != "full" for m in modes]
            new_group = torch.full_like(group, -1)
            new_group[~is_clean] = inv
            group = new_group
        final = clean[f"{tower}.blocks.{n_layers - 1}.resid_post"]
        full_ids = [g for g, pl in enumerate(pooled) if not pl]
        pool_ids = [g for g, pl in enumerate(pooled) if pl]
        x = torch.cat([final] + [states[g] for g in full_ids])
        if tokens is not None:
            tokens = tokens.repeat(len(full_ids) + 1, 1)
        emb_full = mod.run_from(n_layers, x, tokens=tokens).embed.view(len(full_ids) + 1, n, -1)
        emb = torch.empty(len(states) + 1, n, emb_full.shape[-1], dtype=emb_full.dtype)
        emb[0] = emb_full[0]
        emb[torch.tensor(full_ids, dtype=torch.long) + 1] = emb_full[1:]
        if pool_ids:
            xp = torch.cat([states[g] for g in pool_ids])
            emb_p = mod.embed_pooled_rows(xp).view(len(pool_ids), n, -1)
            emb[torch.tensor(pool_ids, dtype=torch.long) + 1] = emb_p.to(emb.dtype)
        return emb[group + 1]

    def _block(
        self,
        mod: Any,
        layer: int,
        x: Tensor,
        rep_patterns: Tensor,
        plan: dict[str, tuple[list[int], Tensor]] | None,
        fams: Sequence[tuple[Any, list[int]]],
        layer_of: Tensor,
        pos: Tensor | None,
        pooled: bool,
    ) -> Tensor:
        """Block ``layer`` for groups of n rows; at the pooled positions ``pos`` when given."""
        n = self.n_rows
        causal = bool(mod._causal())
        rows = None if pos is None else pos.repeat(x.shape[0] // n)
        if plan is not None:
            return _sparse_layer(mod.blocks[layer], x, rep_patterns, plan, n, causal, rows, pooled)
        if pooled:  # a hooked block mixes positions, so no group reaches it pooled
            raise AssertionError("a hooked block cannot run on pooled rows")
        ivs: list[Intervention] = []
        # only block `layer` runs now: nodes of other layers count as kept (their hooks do
        # not fire here), so families build no masks for them
        rep_keep = rep_patterns.clone()
        rep_keep[:, layer_of != layer] = True
        for fam, fcols in fams:
            ivs += fam.interventions(rep_keep[:, fcols], n)
        ctx = HookContext.for_names(mod.hook_points(), None, ivs)
        y = mod.blocks[layer](x, ctx, causal=causal)
        if rows is None:
            return y
        return y[torch.arange(y.shape[0]), rows].unsqueeze(1)

    def _sparse_plan(
        self, fams: Sequence[tuple[Any, list[int]]], layer_of: Tensor, layer: int
    ) -> dict[str, tuple[list[int], Tensor]] | None:
        """Pattern columns and ablated values of the heads / neurons at ``layer``, or None.

        None (use the hooked block) when a family other than ``HeadFamily`` /
        ``NeuronFamily`` has nodes at this layer, or two families of one kind do.
        """
        plan: dict[str, tuple[list[int], Tensor]] = {}
        for fam, fcols in fams:
            cols = torch.tensor(fcols, dtype=torch.long)
            at_layer = cols[layer_of[cols] == layer].tolist()
            if not at_layer:
                continue
            if type(fam) not in (HeadFamily, NeuronFamily) or fam.kind in plan:
                return None
            plan[fam.kind] = (at_layer, fam.values[fam.hook(layer)])
        return plan


def _last_mixing_layer(
    patterns: Tensor,
    plans: Sequence[dict[str, tuple[list[int], Tensor]] | None],
    mod: Any,
    every: int | None,
) -> Tensor:
    """Per pattern, the last block whose output at one position depends on other positions.

    That is a block with a kept head: a hooked block (``plan`` None), one without a head
    family, one whose head family misses some heads, or one keeping any of them; -1 when
    none does. ``every`` (not None) forces that value for every pattern.
    """
    count = patterns.shape[0]
    if every is not None:
        return torch.full((count,), every, dtype=torch.long)
    last = torch.full((count,), -1, dtype=torch.long)
    for layer, plan in enumerate(plans):
        heads = None if plan is None else plan.get("heads")
        if heads is None or len(set(heads[0])) < mod.blocks[layer].attn.heads:
            last[:] = layer
        else:
            last[patterns[:, heads[0]].any(1)] = layer
    return last


def _sparse_layer(
    block: Any,
    x: Tensor,
    rep_patterns: Tensor,
    plan: dict[str, tuple[list[int], Tensor]],
    n: int,
    causal: bool,
    rows: Tensor | None = None,
    pooled: bool = False,
) -> Tensor:
    """Block output for ``G`` groups of ``n`` rows each, groups with equal keeps batched.

    ``rows`` [G * n]: the output at those positions only, ``[G * n, 1, d]`` (``pooled``:
    ``x`` is already there); see ``ablated_block``.
    """
    if not plan:  # no ablatable node at this block: every group runs it plainly
        if rows is None:
            return block(x, causal=causal)
        return block.forward_rows(x, rows, causal=causal)  # never pooled: its heads mix
    n_groups = rep_patterns.shape[0]
    heads = plan.get("heads")
    neurons = plan.get("neurons")
    parts = []
    if heads is not None:
        parts.append(rep_patterns[:, heads[0]])
    if neurons is not None:
        parts.append(rep_patterns[:, neurons[0]])
    key = torch.cat(parts, 1)
    buckets, which = torch.unique(key, dim=0, return_inverse=True)
    xs = x.view(n_groups, n, *x.shape[1:])
    t_out = x.shape[1] if rows is None else 1
    out = torch.empty(n_groups, n, t_out, x.shape[2], dtype=x.dtype)
    for b in range(buckets.shape[0]):
        idx = torch.nonzero(which == b).flatten()
        g0 = int(idx[0])
        yb = ablated_block(
            block,
            xs[idx].flatten(0, 1),
            head_keep=None if heads is None else rep_patterns[g0, heads[0]],
            head_value=None if heads is None else heads[1],
            neuron_keep=None if neurons is None else rep_patterns[g0, neurons[0]],
            neuron_value=None if neurons is None else neurons[1],
            causal=causal,
            rows=None if rows is None else rows[: idx.numel() * n],
            pooled=pooled,
        )
        out[idx] = yb.view(idx.numel(), n, t_out, x.shape[2])
    return out.flatten(0, 1)


def _scale_bias(pair: Any) -> tuple[Tensor, Tensor | None]:
    scale = pair.logit_scale.detach()
    bias = pair.logit_bias.detach() if pair.logit_bias is not None else None
    return scale, bias
