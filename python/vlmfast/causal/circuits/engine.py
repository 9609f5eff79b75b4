"""Batched evaluation of circuits: the layer-trie ablation engine.

A *circuit* is a set of nodes (:class:`~vlmfast.causal.circuits.types.CircuitNode`); the
metric of a circuit ``m(C)`` is the pair's metric with **every node outside C ablated**.
The engine evaluates many circuits ("variants") at once from a bool keep matrix
``keep[n_variants, n_nodes]`` (True = the node is in the circuit, i.e. left alone). The
nodes come from component families (``families.py``: the protocol and its contract).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from vlmfast.causal.circuits.ablated_block import last_mixing_layer, sparse_layer
from vlmfast.causal.circuits.families import (
    ABLATIONS,
    AblationSources,
    HeadFamily,
    NeuronFamily,
)
from vlmfast.causal.circuits.types import CircuitNode
from vlmfast.causal.core import backend
from vlmfast.causal.core.limits import DEFAULT_MAX_ROWS
from vlmfast.causal.core.metrics import similarity
from vlmfast.errors import InputError
from vlmfast.models.hooks import HookContext
from vlmfast.models.interventions import Intervention

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
        self.scale, self.bias = backend.logit_scale_bias(pair)
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
        walk = _TrieWalk(self, tower, patterns)
        for layer in range(walk.n_layers):
            walk.step(layer)
        return walk.embeddings()

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
            return sparse_layer(mod.blocks[layer], x, rep_patterns, plan, n, causal, rows, pooled)
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


class _TrieWalk:
    """One tower's blocks for many kept sets, sharing the blocks where their prefixes agree.

    ``group[p]``: the trie node of pattern ``p`` after the blocks run so far (-1 = clean);
    ``states[g]``: that node's block output, ``[n, T, d]``, or ``[n, 1, d]`` at the pooled
    rows (``pooled[g]``).
    """

    def __init__(self, ev: CircuitEvaluator, tower: str, patterns: Tensor) -> None:
        self.ev = ev
        self.tower = tower
        self.patterns = patterns
        self.mod = ev.pair.tower(tower)
        self.n_layers = len(self.mod.blocks)
        cols = ev.columns[tower]
        self.layer_of = ev.layer_of[cols]
        local = {c: i for i, c in enumerate(cols)}  # node column -> column of `patterns`
        self.fams = [(f, [local[c] for c in fc]) for f, fc in ev._tower_families(tower)]
        self.clean = ev._clean[tower]
        self.plans = [
            ev._sparse_plan(self.fams, self.layer_of, layer) if ev.sparse else None
            for layer in range(self.n_layers)
        ]
        first = self.clean[f"{tower}.blocks.0.resid_pre"]
        self.tokens = ev.inputs["text"] if tower == "text" else None
        self.pos = self.mod.pooled_positions(first, self.tokens) if ev.sparse else None
        every = self.n_layers if self.pos is None else None
        self.last_mix = last_mixing_layer(patterns, self.plans, self.mod, every)
        self.group = torch.full((patterns.shape[0],), -1, dtype=torch.long)
        self.states: list[Tensor] = []
        self.pooled: list[bool] = []

    def step(self, layer: int) -> None:
        """Runs block ``layer`` once per distinct (parent group, kept set up to ``layer``)."""
        upto = self.patterns[:, self.layer_of <= layer]
        is_clean = upto.all(1)
        if bool(is_clean.all()):
            return
        key = torch.cat([self.group.unsqueeze(1) + 1, upto.long()], 1)
        uniq, inv = torch.unique(key[~is_clean], dim=0, return_inverse=True)
        # representative pattern of each new group, its parent, its patterns' last mixing
        idx = torch.nonzero(~is_clean).flatten()
        reps = torch.zeros(uniq.shape[0], dtype=torch.long)
        reps[inv] = idx
        parent = self.group[reps].tolist()
        mix = torch.full((uniq.shape[0],), -1, dtype=torch.long)
        mix.scatter_reduce_(0, inv, self.last_mix[idx], reduce="amax")
        modes = []
        for g, p in enumerate(parent):
            if int(mix[g]) > layer:
                modes.append("full")
            elif p >= 0 and self.pooled[p]:
                modes.append("pooled")
            else:
                modes.append("rows")
        self.states = self._run_groups(layer, modes, parent, reps)
        self.pooled = [m != "full" for m in modes]
        new_group = torch.full_like(self.group, -1)
        new_group[~is_clean] = inv
        self.group = new_group

    def _run_groups(
        self, layer: int, modes: list[str], parent: list[int], reps: Tensor
    ) -> list[Tensor]:
        ev, n = self.ev, self.ev.n_rows
        x_clean = self.clean[f"{self.tower}.blocks.{layer}.resid_pre"]
        new_states: list[Tensor] = [x_clean] * len(modes)
        for mode in ("full", "rows", "pooled"):
            gs = [g for g, m in enumerate(modes) if m == mode]
            if not gs:
                continue
            x = torch.cat([x_clean if parent[g] < 0 else self.states[parent[g]] for g in gs])
            y = ev._block(
                self.mod, layer, x, self.patterns[reps[gs]], self.plans[layer], self.fams,
                self.layer_of, None if mode == "full" else self.pos, mode == "pooled",
            )  # fmt: skip
            for j, g in enumerate(gs):
                new_states[g] = y[j * n : (j + 1) * n]
            ev.stats[f"{self.tower}_rows"] += int(x.shape[0])
            if mode != "full":
                ev.stats[f"{self.tower}_pooled_rows"] += int(x.shape[0])
        return new_states

    def embeddings(self) -> Tensor:
        """``[u, n, e]``: the clean run's end for clean groups, the final LN + pool else."""
        n, mod, states = self.ev.n_rows, self.mod, self.states
        final = self.clean[f"{self.tower}.blocks.{self.n_layers - 1}.resid_post"]
        full_ids = [g for g, pl in enumerate(self.pooled) if not pl]
        pool_ids = [g for g, pl in enumerate(self.pooled) if pl]
        x = torch.cat([final] + [states[g] for g in full_ids])
        tokens = self.tokens
        if tokens is not None:
            tokens = tokens.repeat(len(full_ids) + 1, 1)
        emb_full = mod.run_from(self.n_layers, x, tokens=tokens).embed
        emb_full = emb_full.view(len(full_ids) + 1, n, -1)
        emb = torch.empty(len(states) + 1, n, emb_full.shape[-1], dtype=emb_full.dtype)
        emb[0] = emb_full[0]
        emb[torch.tensor(full_ids, dtype=torch.long) + 1] = emb_full[1:]
        if pool_ids:
            xp = torch.cat([states[g] for g in pool_ids])
            emb_p = mod.embed_pooled_rows(xp).view(len(pool_ids), n, -1)
            emb[torch.tensor(pool_ids, dtype=torch.long) + 1] = emb_p.to(emb.dtype)
        return emb[self.group + 1]
