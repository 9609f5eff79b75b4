"""One attribution run: source forward, base forward(s) with gradient, backward(s), scores.

The method's arithmetic (AtP, AtP* with GradDrop, IG's midpoint rule) is described in
``attribute.py``; this module is the engine ``attribute`` drives.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from vlmfast.causal.attribution.atp_star import qk_fixed_position_scores
from vlmfast.causal.attribution.capture import (
    KIND_POINT,
    Capture,
    GradGate,
    gate_names,
    hook,
    reduce_score,
    run_tower,
)
from vlmfast.causal.attribution.result import AttributionResult
from vlmfast.causal.core import backend
from vlmfast.causal.core.conventions import TOWERS, check_metric_output

Key = tuple[str, str]
ScoreFn = Callable[[Tensor, Tensor], Tensor]


class AttributionEngine:
    """One attribution run: source forward, base forward(s) with grad, backward(s), scores."""

    def __init__(
        self,
        pair: Any,
        inputs: dict[str, tuple[Tensor, Tensor]],
        changed: dict[str, bool],
        towers: list[str],
        kinds: list[str],
        method: str,
        score: ScoreFn,
        direction: str,
    ) -> None:
        self.pair = pair
        self.direction = direction
        self.inputs = inputs
        self.changed = changed
        self.towers = towers
        self.kinds = kinds
        self.method = method
        self.score = score
        self.layers = {t: backend.n_layers(pair, t) for t in TOWERS}
        # towers whose scores need gradients (an unchanged tower scores 0 everywhere)
        self.active = [t for t in towers if changed[t]]
        self.qk_fix = method == "atp*" and "resid" in kinds

    # ---- hooks ---------------------------------------------------------------------
    def _score_hooks(self, tower: str) -> list[str]:
        """Hooks that get a gradient leaf: resid_pre 0 (the cut) and every scored point."""
        layers = range(self.layers[tower])
        names = [hook(tower, 0, "resid_pre")]
        for kind in self.kinds:
            names += [hook(tower, layer, KIND_POINT[kind]) for layer in layers]
        if self.qk_fix:
            points = ("resid_mid", "attn.v", "attn.pattern")
            names += [hook(tower, layer, p) for layer in layers for p in points]
        return list(dict.fromkeys(names))

    def _value_hooks(self, tower: str) -> list[str]:
        """Hooks whose source and base values the scores need."""
        names = [n for n in self._score_hooks(tower) if not n.endswith("attn.pattern")]
        if self.qk_fix:
            layers = range(self.layers[tower])
            names += [hook(tower, layer, p) for layer in layers for p in ("attn.q", "attn.k")]
        return list(dict.fromkeys(names))

    # ---- run -----------------------------------------------------------------------
    def run(self, steps: int, max_rows: int) -> AttributionResult:
        src: dict[str, dict[str, Tensor]] = {}
        src_embed: dict[str, Tensor] = {}
        base_cache: dict[str, dict[str, Tensor]] = {}
        base_embed: dict[str, Tensor] = {}
        with torch.no_grad():
            for t in TOWERS:
                base_in, src_in = self.inputs[t]
                hooks = self._value_hooks(t) if t in self.active else []
                if self.changed[t]:
                    src_embed[t], src[t] = run_tower(self.pair, t, src_in, cache=hooks)
                if self.method == "ig" or t not in self.active:
                    base_embed[t], base_cache[t] = run_tower(self.pair, t, base_in, cache=hooks)
        if self.method == "ig":
            grad_sets = [self._ig_grads(steps, max_rows, src, base_cache, base_embed)]
            values = {n: v for c in base_cache.values() for n, v in c.items()}
        else:
            grad_sets, values = self._atp_grads(base_embed)
        for t in TOWERS:
            src_embed.setdefault(t, base_embed[t])
        scored = [self._scores(g, values, src) for g in grad_sets]
        scores, cuts = scored[0]
        graddrop = None
        if self.method == "atp*":
            graddrop = {}
            for key in scores:
                depth = self.layers[key[0]]
                if key[0] not in self.active:
                    graddrop[key] = torch.zeros_like(scores[key])
                    continue
                # backward l (1..depth) dropped block l-1 of this tower
                dropped = torch.stack([s[0][key] for s in scored[1 : depth + 1]])
                graddrop[key] = dropped.abs().sum(0) / max(depth - 1, 1)
        return self._result(scores, cuts, graddrop, base_embed, src_embed, steps)

    def _atp_grads(
        self, base_embed: dict[str, Tensor]
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """Base forward with gradient leaves; one backward (atp) or 1 + depth (atp*)."""
        captures: dict[str, Capture] = {}
        gates: dict[str, GradGate] = {}
        values: dict[str, Tensor] = {}
        with torch.enable_grad():
            embeds = dict(base_embed)
            for t in self.active:
                captures[t] = Capture(self._score_hooks(t))
                if self.method == "atp*":
                    gates[t] = GradGate(gate_names(t, self.layers[t]))
                qk = [n for n in self._value_hooks(t) if n.endswith(("attn.q", "attn.k"))]
                embeds[t], cache = run_tower(
                    self.pair,
                    t,
                    self.inputs[t][0],
                    capture=captures[t],
                    cache=qk,
                    gate=gates.get(t),
                )
                values.update(captures[t].values)
                values.update({n: v.detach() for n, v in cache.items()})
            m = self.score(embeds["image"], embeds["text"])
            check_metric_output(m, None, "metric")
            if not captures:  # no scored tower is changed by the corruption
                return [{}], values
            leaves = {n: leaf for c in captures.values() for n, leaf in c.leaves.items()}
            names = list(leaves)
            n_drop = max((self.layers[t] for t in gates), default=0)
            grad_sets: list[dict[str, Tensor]] = []
            for k in range(n_drop + 1):
                for t, gate in gates.items():
                    gate.drop = set()
                    if 0 < k <= self.layers[t]:
                        gate.drop = {hook(t, k - 1, "attn_out"), hook(t, k - 1, "mlp_out")}
                got = torch.autograd.grad(
                    m, [leaves[n] for n in names], retain_graph=k < n_drop, allow_unused=True
                )
                grad_sets.append(
                    {
                        n: g if g is not None else torch.zeros_like(leaves[n])
                        for n, g in zip(names, got, strict=True)
                    }
                )
        for t in self.active:
            base_embed[t] = embeds[t].detach()
        return grad_sets, values

    def _ig_grads(
        self,
        steps: int,
        max_rows: int,
        src: dict[str, dict[str, Tensor]],
        base_cache: dict[str, dict[str, Tensor]],
        base_embed: dict[str, Tensor],
    ) -> dict[str, Tensor]:
        """Mean gradient over the midpoint-rule points of each tower's input line."""
        alphas = (torch.arange(steps, dtype=torch.float64) + 0.5) / steps
        rows = max(self.inputs[t][0].shape[0] for t in TOWERS)
        per_chunk = max(1, max_rows // rows)
        acc: dict[str, Tensor] = {}
        for start in range(0, steps, per_chunk):
            chunk = alphas[start : start + per_chunk]
            n = len(chunk)
            leaves: dict[str, Tensor] = {}
            with torch.enable_grad():
                total: Tensor | None = None
                for t in self.active:
                    cut = hook(t, 0, "resid_pre")
                    x0, x1 = base_cache[t][cut], src[t][cut]
                    a = chunk.to(device=x0.device, dtype=x0.dtype).view(-1, 1, 1, 1)
                    x = (x0 + a * (x1 - x0)).reshape(n * x0.shape[0], *x0.shape[1:])
                    tokens = self.inputs[t][0].repeat(n, 1) if t == "text" else None
                    cap = Capture(self._score_hooks(t))
                    e, _ = run_tower(self.pair, t, x, capture=cap, from_resid=x, tokens=tokens)
                    e = e.reshape(n, x0.shape[0], -1)
                    if t == "image":
                        m = self.score(e, base_embed["text"])
                    else:
                        m = self.score(base_embed["image"], e)
                    check_metric_output(m, n, "metric")
                    total = m.sum() if total is None else total + m.sum()
                    leaves.update(cap.leaves)
                if total is None:
                    return {}
                names = list(leaves)
                got = torch.autograd.grad(total, [leaves[k] for k in names], allow_unused=True)
            for name, g in zip(names, got, strict=True):
                leaf = leaves[name]
                g = torch.zeros_like(leaf) if g is None else g
                g = g.reshape(n, -1, *leaf.shape[1:]).sum(0)
                acc[name] = g if name not in acc else acc[name] + g
        return {k: v / steps for k, v in acc.items()}

    # ---- scores --------------------------------------------------------------------
    def _n_components(self, tower: str, kind: str) -> int:
        return backend.n_components(self.pair, tower, kind, self.inputs[tower][0])

    def _scores(
        self,
        grads: dict[str, Tensor],
        values: dict[str, Tensor],
        src: dict[str, dict[str, Tensor]],
    ) -> tuple[dict[Key, Tensor], dict[str, float]]:
        scores: dict[Key, Tensor] = {}
        cuts: dict[str, float] = {}
        for t in self.towers:
            depth = self.layers[t]
            if t not in self.active:
                for kind in self.kinds:
                    scores[t, kind] = torch.zeros(depth, self._n_components(t, kind))
                cuts[t] = 0.0
                continue
            causal = t == "text" and bool(self.pair.config.text.causal)

            def delta(name: str, t: str = t) -> Tensor:
                return src[t][name] - values[name]

            cut = hook(t, 0, "resid_pre")
            cuts[t] = float(reduce_score("resid", delta(cut), grads[cut]).sum())
            for kind in self.kinds:
                rows = []
                for layer in range(depth):
                    name = hook(t, layer, KIND_POINT[kind])
                    if kind == "resid" and self.qk_fix:
                        q, k, v, p, mid = (
                            hook(t, layer, x)
                            for x in ("attn.q", "attn.k", "attn.v", "attn.pattern", "resid_mid")
                        )
                        row = reduce_score("resid", delta(name), grads[mid])  # skip path
                        row = row + qk_fixed_position_scores(
                            values[q], values[k], values[v], src[t][q], src[t][k], src[t][v],
                            grads[p], grads[v], causal,
                        ).to(row.device)  # fmt: skip
                    else:
                        row = reduce_score(kind, delta(name), grads[name])
                    rows.append(row.detach().float().cpu())
                scores[t, kind] = torch.stack(rows)
            if "resid" in self.kinds:
                cuts[t] = float(scores[t, "resid"][0].sum())
        return scores, cuts

    def _result(
        self,
        scores: dict[Key, Tensor],
        cuts: dict[str, float],
        graddrop: dict[Key, Tensor] | None,
        base_embed: dict[str, Tensor],
        src_embed: dict[str, Tensor],
        steps: int,
    ) -> AttributionResult:
        with torch.no_grad():
            img_b, txt_b = base_embed["image"], base_embed["text"]
            img_s, txt_s = src_embed["image"], src_embed["text"]
            m_base = float(self.score(img_b, txt_b))
            m_src = float(self.score(img_s, txt_s))
            change = {
                "image": float(self.score(img_s, txt_b)) - m_base,
                "text": float(self.score(img_b, txt_s)) - m_base,
            }
        total = m_src - m_base
        gaps = {t: cuts[t] - change[t] for t in self.towers}
        gaps["joint"] = sum(cuts[t] for t in self.towers) - total
        layer_gaps = {}
        if "resid" in self.kinds:
            layer_gaps = {t: scores[t, "resid"].sum(1) - change[t] for t in self.towers}
        return AttributionResult(
            scores=scores,
            method=self.method,
            direction=self.direction,
            steps=steps if self.method == "ig" else None,
            metric_base=m_base,
            metric_source=m_src,
            total_change=total,
            tower_change=change,
            completeness_gap=gaps,
            layer_gaps=layer_gaps,
            graddrop=graddrop,
        )
