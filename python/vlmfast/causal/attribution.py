"""Attribution patching (AtP, AtP*, integrated gradients) for both towers of a pair.

    att = vf.causal.attribute(pair, images=px, texts=tok, corrupt_images=px_c,
                              components=("resid", "heads", "neurons"), method="atp")
    att.scores["image", "heads"]   # Tensor[layers, heads]
    att.completeness_gap           # {"image": ..., "text": ..., "joint": ...}

**Components** (one hook per block ``L``; every score sums over the batch rows):

* ``resid``: ``blocks.L.resid_pre`` (the residual stream *entering* block ``L``), one
  component per position: ``Tensor[layers, positions]``;
* ``heads``: ``blocks.L.attn.z`` of one head, all positions together: ``Tensor[layers, heads]``;
* ``neurons``: ``blocks.L.mlp.post`` of one neuron, all positions: ``Tensor[layers, mlp_width]``.

**Sign** (``direction``): ``"denoising"`` (default, the project convention): the gradient is
taken at the corrupt run and ``delta = clean - corrupt``, so a score estimates
``m(corrupt with the component restored from clean) - m(corrupt)``: what tracing and
``patch_sweep(base=corrupt, source=clean, normalize="delta")`` measure. ``"noising"``:
gradient at the clean run, ``delta = corrupt - clean``. Below, *base* is the run where the
gradient is taken and *source* the run patched values come from.

**Towers.** The towers meet only in the logit, so one backward of ``m(img, txt)`` gives the
gradients of both. A component of one tower is patched with the other tower left at base,
so each tower's scores estimate ``Delta_tower = m(source tower, base other) - m(base)``.

**Completeness.** ``blocks.0.resid_pre`` (summed over positions) is a complete cut of a tower:
restoring all of it restores the tower (up to text pooling: the base tokens choose the EOT
position, so clean and corrupt captions should share it). ``completeness_gap[tower]`` =
(sum of that cut's scores) - ``Delta_tower``; ``completeness_gap["joint"]`` = (sum over both
towers) - ``(m(source) - m(base))`` (it also holds the cross-tower interaction, which no
single-tower patch sees). With ``resid`` requested, ``layer_gaps[tower]`` gives the gap of
every layer's cut. The gap is 0 exactly when the tower is linear in that cut.

**Methods.**

* ``"atp"``: two forwards, one backward: ``(a_source - a_base) . dm/da |_base``.
* ``"atp*"``: AtP* (Kramar et al. 2024). QK fix: a ``resid`` score at block L is the skip
  path (``delta . dm/d resid_mid``) plus block L's attention response computed without
  differentiating its softmax (``_atp_star``: the value part, the query at ``p`` patched
  with the softmax recomputed exactly, and the key at ``p`` patched on its own, closed
  form). Head scores need no fix (AtP on ``attn.z`` uses the exact ``delta z``, so a head's
  own softmax is never linearised) and neurons have no softmax: both are AtP. On top, GradDrop: for every
  block ``l`` one more backward with the gradient through block ``l``'s residual writes
  (``attn_out``, ``mlp_out``) zeroed; ``graddrop[key] = sum_l |score_l| / (L - 1)`` (``L``
  the tower's depth). ``scores`` keep the signed QK-fixed estimate (completeness is
  defined on them); ``graddrop`` is the unsigned ranking AtP* uses (``compare`` ranks by it).
  Cost: two forwards and ``1 + max(layers)`` backwards, attention patterns materialised.
* ``"ig"``: integrated gradients along the straight line between the base and source
  **input embeddings** ``blocks.0.resid_pre`` of each tower (EAP-IG-inputs style; the other
  tower stays at base), with the **midpoint rule**: ``alpha_k = (k + 1/2) / steps``,
  ``k = 0 .. steps-1``, weights ``1/steps``; a score is ``delta . mean_k dm/da(alpha_k)``
  with ``delta`` the endpoint difference. Neither endpoint is evaluated, so ``steps=1`` is
  the gradient at the midpoint, not AtP. At the layer-0 cut the gap is only quadrature error.

``null=K`` adds ``att.null``: a random-subset false-negative estimate (see ``_attr_exact``).
Nothing is written anywhere; the pair must be in eval mode.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from vlmfast.causal import _backend as backend
from vlmfast.causal._atp_star import qk_fixed_position_scores
from vlmfast.causal._attr_capture import (
    KIND_POINT,
    Capture,
    GradGate,
    gate_names,
    hook,
    reduce_score,
    run_tower,
)
from vlmfast.causal._attr_exact import exact_effects
from vlmfast.causal.attribution_result import AttributionResult
from vlmfast.causal.conventions import (
    TOWERS,
    check_choice,
    check_eval_mode,
    check_metric_output,
    check_paired,
    check_tower,
)
from vlmfast.causal.metrics import Metric, metric_space, resolve_metric, similarity
from vlmfast.errors import InputError

__all__ = ["DIRECTIONS", "KINDS", "METHODS", "attribute", "exact_effects"]

KINDS = ("resid", "heads", "neurons")
METHODS = ("atp", "atp*", "ig")
DIRECTIONS = ("denoising", "noising")
DEFAULT_STEPS = 16
DEFAULT_MAX_ROWS = 512

Key = tuple[str, str]
ScoreFn = Callable[[Tensor, Tensor], Tensor]


def attribute(
    pair: Any,
    images: Any,
    texts: Any,
    corrupt_images: Any = None,
    corrupt_texts: Any = None,
    *,
    components: Sequence[str] = KINDS,
    towers: Sequence[str] = TOWERS,
    method: str = "atp",
    metric: str | Metric = "score",
    direction: str = "denoising",
    steps: int = DEFAULT_STEPS,
    null: int = 0,
    seed: int = 0,
    max_rows: int = DEFAULT_MAX_ROWS,
) -> AttributionResult:
    """Attribution scores of every component of the chosen kinds and towers.

    Args:
        pair: a HookedPair in eval mode.
        images, texts: the clean inputs (pixels / token ids, or PIL images / strings),
            image ``i`` paired with caption ``i``.
        corrupt_images, corrupt_texts: the corrupted inputs, same shapes; ``None`` = that
            tower is not corrupted (at least one must be given).
        components: kinds among ``"resid"``, ``"heads"``, ``"neurons"``.
        towers: ``"image"`` and/or ``"text"``.
        method: ``"atp"``, ``"atp*"`` or ``"ig"`` (see the module doc).
        metric: ``"score"``, ``"logit_diff"``, ``"alignment"`` or a callable on
            ``[..., n_img, n_txt]`` similarities returning one number per leading index.
        direction: ``"denoising"`` (gradient at corrupt, delta = clean - corrupt) or
            ``"noising"`` (gradient at clean, delta = corrupt - clean).
        steps: interpolation steps of ``"ig"`` (midpoint rule).
        null: K > 0 adds the random-subset false-negative estimate (``att.null``): K
            components per (tower, kind, layer) patched exactly.
        seed: seed of the null's random draw.
        max_rows: the most rows per batched forward (IG steps x batch; null sweeps).
    """
    check_choice(method, METHODS, "method")
    if method == "ig" and (not isinstance(steps, int) or steps < 1):
        raise InputError(f"steps must be a positive int for method='ig', got {steps!r}")
    if not isinstance(null, int) or null < 0:
        raise InputError(f"null must be an int >= 0 (components per layer), got {null!r}")
    if max_rows < 1:
        raise InputError(f"max_rows must be >= 1, got {max_rows}")
    metric_fn = resolve_metric(metric)
    space = metric_space(metric_fn)
    inputs, changed, kinds, tower_list = prepare_inputs(
        pair, images, texts, corrupt_images, corrupt_texts, components, towers, direction
    )
    scale, bias = backend.logit_scale_bias(pair)

    def score(img: Tensor, txt: Tensor) -> Tensor:
        return metric_fn(similarity(img, txt, scale, bias, space))

    engine = _Engine(pair, inputs, changed, tower_list, kinds, method, score, direction)
    result = engine.run(steps, max_rows)
    result.meta.update(
        metric=metric if isinstance(metric, str) else repr(metric_fn),
        model=getattr(pair, "spec", "") or pair.config.name,
        n_pairs=int(inputs["image"][0].shape[0]),
        changed=[t for t in TOWERS if changed[t]],
    )
    if null:
        from vlmfast.causal._attr_exact import null_estimate

        result.null = null_estimate(
            pair, result, inputs, metric_fn, k=null, seed=seed, max_rows=max_rows, changed=changed
        )
    return result


def prepare_inputs(
    pair: Any,
    images: Any,
    texts: Any,
    corrupt_images: Any,
    corrupt_texts: Any,
    components: Sequence[str],
    towers: Sequence[str],
    direction: str,
) -> tuple[dict[str, tuple[Tensor, Tensor]], dict[str, bool], list[str], list[str]]:
    """Checked ``({tower: (base, source)}, {tower: changed}, kinds, towers)``."""
    check_eval_mode(pair, "vf.causal.attribute")
    kinds = _check_seq(components, KINDS, "components")
    tower_list = [check_tower(t, "towers") for t in _check_seq(towers, TOWERS, "towers")]
    check_choice(direction, DIRECTIONS, "direction")
    clean = backend.as_inputs(pair, images, texts)
    if corrupt_images is None and corrupt_texts is None:
        raise InputError("attribute needs corrupt_images=, corrupt_texts= or both")
    corrupt_in = backend.as_inputs(pair, corrupt_images, corrupt_texts, need_both=False)
    corrupt = (
        clean[0] if corrupt_in[0] is None else corrupt_in[0],
        clean[1] if corrupt_in[1] is None else corrupt_in[1],
    )
    check_paired(clean[0], corrupt[0], "images")
    check_paired(clean[1], corrupt[1], "texts")
    base, source = (corrupt, clean) if direction == "denoising" else (clean, corrupt)
    inputs = {"image": (base[0], source[0]), "text": (base[1], source[1])}
    changed = {t: not torch.equal(inputs[t][0], inputs[t][1]) for t in TOWERS}
    return inputs, changed, kinds, tower_list


def _check_seq(values: Sequence[str], allowed: Sequence[str], what: str) -> list[str]:
    if isinstance(values, str):
        values = [values]
    out = list(dict.fromkeys(values))
    if not out:
        raise InputError(f"{what} is empty; expected some of {list(allowed)}")
    for v in out:
        check_choice(v, allowed, what)
    return out


class _Engine:
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
        if kind == "heads":
            return backend.n_heads(self.pair, tower)
        if kind == "neurons":
            return backend.mlp_width(self.pair, tower)
        return backend.n_tokens(self.pair, tower, self.inputs[tower][0])

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
