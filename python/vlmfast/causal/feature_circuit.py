"""Sparse feature circuits (Marks et al. 2024) on spliced TopK SAEs, with error nodes.

    fc = vf.causal.find_feature_circuit(pair, px, tok, corrupt_texts=tok_c,
                                        saes={"text.blocks.1.resid_pre": sae},
                                        ablation="resample", target=0.8)
    fc.nodes                          # SAE features and error nodes of the circuit
    fc.error_share                    # {hook: share of |attribution| on its error nodes}
    fc.faithful_only_through_errors   # True: f(C) >= target but f(C minus errors) < target

**Splice.** At each hook ``h`` of ``saes`` the activation is ``x = decode(z) + err`` with
``z = encode(x)`` (dense codes) and ``err = x - decode(z)`` (``_feature_family``). The
error is kept exactly, so the spliced model *is* the original model: its forward is
bitwise the same, and its gradients are the model's (``dx'/dx = I``).

**Nodes.** Every SAE latent of a hook is a node (all positions together: the feature's
codes at every token; ``CircuitNode(tower, "features", layer, latent, hook)``) and so is
the error at every position (``CircuitNode(tower, "errors", layer, position, hook)``).
One SAE per (tower, block): node keys name tower, layer and index only.

**Attribution** (AtP, the project's denoising convention): gradient at the corrupt run,
``delta = clean - corrupt``:

* feature ``f``: ``A_f = sum_{rows, positions} (g_x W_dec[f]^T) * (z_clean - z_corrupt)[f]``:
  the gradient reaches the code through the linear decoder, so a feature that is off in
  the corrupt run and on in the clean one gets credit (feature-circuits' rule);
* error at position ``p``: ``A_e(p) = sum_rows g_x[p] . (err_clean - err_corrupt)[p]``.

``g_x = dm/dx`` at the hook. The decoder is linear, so the node scores of a hook sum to
the AtP of the hook as a cut: ``sum_f A_f + sum_p A_e(p) = <g_x, x_clean - x_corrupt>``
(``completeness[hook]`` holds both sides). ``error_share[hook]`` = ``sum_p |A_e(p)| /
(sum_f |A_f| + sum_p |A_e(p)|)``: near 0 for an SAE that explains the effect, near 1 for
one that does not (a random SAE). Deviation from feature-circuits: there the residual's
gradient is zeroed, so gradients reach *upstream* hooks through the SAE encoder; here the
splice passes them through exactly (``dx'/dx = I``), so every node's score linearises
the original model (with one hook both agree). ``"atp*"`` ranks the same as ``"atp"``
(features and errors have no softmax to fix; GradDrop is not applied to them);
``"exact"`` ablates one node at a time under the circuit's ablation.

**Circuit.** ``find_feature_circuit`` runs ``vf.causal.find_circuit`` with these nodes as
a component family (:func:`feature_families`), then evaluates the circuit once more with
its error nodes ablated too: ``faithfulness_without_errors``. A circuit whose faithfulness
reaches ``target`` only with its error nodes (``faithful_only_through_errors``) explains
nothing in terms of features; ``circuit_error_share`` is the share of the circuit's
``|attribution|`` on its error nodes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from vlmfast.causal import _backend as backend
from vlmfast.causal._attr_capture import Capture
from vlmfast.causal._feature_family import ExactContext, SAEFamily, block_of, sae_codes
from vlmfast.causal.attribution import prepare_inputs
from vlmfast.causal.circuit_types import CircuitNode
from vlmfast.causal.conventions import TOWERS, check_metric_output
from vlmfast.causal.edits import hook_width
from vlmfast.causal.metrics import Metric, metric_space, resolve_metric, similarity
from vlmfast.errors import InputError

__all__ = [
    "FeatureAttribution",
    "FeatureCircuit",
    "SAEFamily",
    "check_saes",
    "feature_attribution",
    "feature_families",
    "find_feature_circuit",
]


def check_saes(
    pair: Any, saes: Mapping[str, Any], towers: Sequence[str] = TOWERS
) -> dict[str, Any]:
    """``saes`` restricted to ``towers``, checked: block hooks of ``pair``, matching widths,
    at most one SAE per (tower, block). InputError naming the hook otherwise."""
    if not isinstance(saes, Mapping) or not saes:
        raise InputError("saes must be a non-empty {hook: TopKSAE} mapping")
    points = set(pair.hook_points())
    seen: dict[tuple[str, int], str] = {}
    out: dict[str, Any] = {}
    for hook, sae in saes.items():
        if hook not in points:
            raise InputError(f"saes: {hook!r} is not a hook of this pair (pair.hook_points())")
        tower, layer = block_of(hook)
        if not hasattr(sae, "d_in") or not hasattr(sae, "W_dec"):
            raise InputError(f"saes[{hook!r}] must be a vf TopKSAE, got {type(sae).__name__}")
        width = hook_width(pair, hook)
        if int(sae.d_in) != width:
            raise InputError(
                f"saes[{hook!r}] has d_in={int(sae.d_in)}, but hook {hook!r} has width {width}"
            )
        if (tower, layer) in seen:
            raise InputError(
                f"saes: {seen[tower, layer]!r} and {hook!r} are both in {tower} block {layer}; "
                "one SAE per block (node keys name tower, layer and index only)"
            )
        seen[tower, layer] = hook
        if tower in towers:
            out[hook] = sae
    if not out:
        raise InputError(f"saes has no hook in towers {list(towers)}")
    return out


@dataclass
class FeatureAttribution:
    """AtP of every SAE feature and error node of each hook (denoising convention)."""

    features: dict[str, Tensor]
    """``hook -> [n_latents]`` signed scores."""
    errors: dict[str, Tensor]
    """``hook -> [n_positions]`` signed scores of the error nodes."""
    hook_total: dict[str, float]
    """``hook -> <g_x, x_clean - x_corrupt>``: the hook's AtP as a cut."""
    metric_clean: float
    metric_corrupt: float

    def error_share(self, hook: str) -> float:
        """``sum |A_e| / (sum |A_f| + sum |A_e|)`` at ``hook`` (nan if everything is 0)."""
        f = float(self.features[hook].abs().sum())
        e = float(self.errors[hook].abs().sum())
        return e / (f + e) if f + e > 0 else float("nan")

    def completeness(self, hook: str) -> tuple[float, float]:
        """``(sum of the hook's node scores, the hook's AtP)``: equal up to rounding."""
        total = float(self.features[hook].sum() + self.errors[hook].sum())
        return total, self.hook_total[hook]


def feature_attribution(
    pair: Any,
    images: Any,
    texts: Any,
    corrupt_images: Any = None,
    corrupt_texts: Any = None,
    *,
    saes: Mapping[str, Any],
    metric: str | Metric = "score",
) -> FeatureAttribution:
    """AtP scores of the features and error nodes of every SAE in ``saes`` (module doc)."""
    saes = check_saes(pair, saes)
    metric_fn = resolve_metric(metric)
    space = metric_space(metric_fn)
    inputs, _, _, _ = prepare_inputs(
        pair, images, texts, corrupt_images, corrupt_texts, ("resid",), TOWERS, "denoising"
    )
    scale, bias = backend.logit_scale_bias(pair)
    hooks = {t: [h for h in saes if h.startswith(t + ".")] for t in TOWERS}
    clean: dict[str, Tensor] = {}
    captures: dict[str, Capture] = {}
    embeds: dict[str, Tensor] = {}
    with torch.no_grad():
        m_clean = float(
            metric_fn(
                similarity(
                    backend.embed(pair, "image", inputs["image"][1]),
                    backend.embed(pair, "text", inputs["text"][1]),
                    scale, bias, space,
                )
            )
        )  # fmt: skip
        for t in TOWERS:
            if hooks[t]:
                clean.update(backend.run_cache(pair, t, inputs[t][1], hooks[t]))
    with torch.enable_grad():
        for t in TOWERS:
            ivs = None
            if hooks[t]:
                captures[t] = Capture(hooks[t])
                ivs = [captures[t]]
            embeds[t] = pair.tower(t).run(inputs[t][0], interventions=ivs).embed
        m = metric_fn(similarity(embeds["image"], embeds["text"], scale, bias, space))
        check_metric_output(m, None, "metric")
        leaves = {h: leaf for c in captures.values() for h, leaf in c.leaves.items()}
        got = torch.autograd.grad(m, list(leaves.values()), allow_unused=True)
    grads = {
        h: g if g is not None else torch.zeros_like(leaves[h])
        for h, g in zip(leaves, got, strict=True)
    }
    corrupt = {h: v for c in captures.values() for h, v in c.values.items()}
    features: dict[str, Tensor] = {}
    errors: dict[str, Tensor] = {}
    totals: dict[str, float] = {}
    for h, sae in saes.items():
        g = grads[h].detach().float()
        z_c, e_c = sae_codes(sae, clean[h])
        z_k, e_k = sae_codes(sae, corrupt[h])
        g_z = g @ sae.W_dec.detach().float().T  # [B, T, n_latents]
        features[h] = (g_z * (z_c - z_k)).sum(dim=(0, 1)).cpu()
        errors[h] = (g * (e_c - e_k)).sum(dim=(0, 2)).cpu()
        totals[h] = float((g * (clean[h].float() - corrupt[h].float())).sum())
    return FeatureAttribution(features, errors, totals, m_clean, float(m.detach()))


def feature_families(
    pair: Any,
    images: Any,
    texts: Any,
    corrupt_images: Any = None,
    corrupt_texts: Any = None,
    *,
    saes: Mapping[str, Any],
    towers: Sequence[str] = TOWERS,
    metric: str | Metric = "score",
    latents: Mapping[str, Sequence[int]] | None = None,
    attribution: FeatureAttribution | None = None,
    max_rows: int = 512,
) -> list[SAEFamily]:
    """One ``SAEFamily`` per SAE of ``towers`` with its AtP scores (for ``find_circuit``).

    ``latents={hook: [...]}`` restricts a hook's feature nodes (default: every latent);
    error nodes are always every position. Without corrupt inputs the families carry no
    scores (rank them with ``ranking=[...]``). ``attribution``: precomputed scores of these
    inputs (``feature_attribution``), to skip recomputing them. ``ranking="exact"``
    scores a node by ``m(clean with only it ablated) - m(clean)`` under ``find_circuit``'s
    ablation, ``max_rows`` rows per forward.
    """
    chosen = check_saes(pair, saes, towers)
    att = attribution
    if att is None and (corrupt_images is not None or corrupt_texts is not None):
        att = feature_attribution(
            pair, images, texts, corrupt_images, corrupt_texts, saes=chosen, metric=metric
        )
    px, tok = backend.as_inputs(pair, images, texts)
    metric_fn = resolve_metric(metric)
    space = metric_space(metric_fn)
    scale, bias = backend.logit_scale_bias(pair)

    def score(img: Tensor, txt: Tensor) -> Tensor:
        return metric_fn(similarity(img, txt, scale, bias, space))

    context = ExactContext(pair, {"image": px, "text": tok}, score, max_rows)
    out = []
    for hook, sae in chosen.items():
        tower = hook.split(".", 1)[0]
        n_pos = backend.n_tokens(pair, tower, tok)
        lat = None if latents is None else latents.get(hook)
        scores = None
        if att is not None:
            feats = att.features[hook]
            if lat is not None:
                feats = feats[torch.as_tensor(list(lat), dtype=torch.long)]
            signed = torch.cat([feats, att.errors[hook][:n_pos]]).double()
            scores = {"atp": signed, "atp*": signed}
        fam = SAEFamily(hook, sae, n_pos, lat, scores)
        fam.exact_context = context
        out.append(fam)
    return out


@dataclass
class FeatureCircuit:
    """A feature circuit: ``find_circuit``'s result plus the error-node diagnostics.

    Attribute access falls through to ``circuit`` (``fc.nodes``, ``fc.faithfulness``,
    ``fc.edges(...)``, ``fc.to_svg(...)`` ...).
    """

    circuit: Any
    """The ``vf.causal`` Circuit that ``find_circuit`` returned."""
    attribution: FeatureAttribution
    error_share: dict[str, float]
    """Per hook: share of the nodes' |attribution| carried by its error nodes."""
    circuit_error_share: float
    """Share of the circuit's |attribution| carried by its error nodes."""
    faithfulness_without_errors: float
    """f of the circuit with its error nodes ablated as well."""
    faithful_only_through_errors: bool
    """f(C) >= target, but f(C without its error nodes) < target."""
    meta: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "circuit":
            raise AttributeError(name)
        return getattr(self.circuit, name)

    @property
    def error_nodes(self) -> list[CircuitNode]:
        return [n for n in self.circuit.nodes if n.kind == "errors"]

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.circuit.to_dict())
        out.update(
            error_share=self.error_share,
            circuit_error_share=self.circuit_error_share,
            faithfulness_without_errors=self.faithfulness_without_errors,
            faithful_only_through_errors=self.faithful_only_through_errors,
            completeness={h: list(self.attribution.completeness(h)) for h in self.error_share},
            feature_attribution={h: v.tolist() for h, v in self.attribution.features.items()},
            error_attribution={h: v.tolist() for h, v in self.attribution.errors.items()},
        )
        return out

    def to_json(self, indent: int | None = 2) -> str:
        """``to_dict`` as JSON (NaN / inf written as null)."""
        import json

        from vlmfast.causal.attribution_result import json_safe

        return json.dumps(json_safe(self.to_dict()), indent=indent, allow_nan=False)


def find_feature_circuit(
    pair: Any,
    images: Any,
    texts: Any,
    corrupt_images: Any = None,
    corrupt_texts: Any = None,
    *,
    saes: Mapping[str, Any],
    towers: Sequence[str] = TOWERS,
    metric: str | Metric = "score",
    latents: Mapping[str, Sequence[int]] | None = None,
    ablation: str = "mean",
    target: float = 0.8,
    **kwargs: Any,
) -> FeatureCircuit:
    """The smallest set of SAE features and error nodes that keeps ``target`` faithfulness.

    Runs ``vf.causal.find_circuit(..., components=(), families=feature_families(...))``
    (every other keyword goes to it: ``ranking``, ``null``, ``seed``, ``max_rows``...), then
    the error-node diagnostics (module doc). Needs corrupt inputs for the default ranking.
    """
    from vlmfast.causal._circuit_engine import CircuitEvaluator
    from vlmfast.causal.circuit import find_circuit

    for bad in ("components", "families"):
        if bad in kwargs:
            raise InputError(f"find_feature_circuit sets {bad}= itself; use find_circuit for more")
    chosen = check_saes(pair, saes, towers)
    att = feature_attribution(
        pair, images, texts, corrupt_images, corrupt_texts, saes=chosen, metric=metric
    )
    fams = feature_families(
        pair, images, texts, corrupt_images, corrupt_texts,
        saes=chosen, towers=towers, metric=metric, latents=latents, attribution=att,
    )  # fmt: skip
    circuit = find_circuit(
        pair, images, texts, corrupt_images, corrupt_texts,
        components=(), towers=towers, families=fams, metric=metric,
        ablation=ablation, target=target, **kwargs,
    )  # fmt: skip
    score = {}
    for f in fams:
        assert f.attribution is not None
        for n, s in zip(f.nodes(), f.attribution["atp"].tolist(), strict=True):
            score[n] = abs(s)
    in_c = [abs(score.get(n, 0.0)) for n in circuit.nodes]
    err_c = [abs(score.get(n, 0.0)) for n in circuit.nodes if n.kind == "errors"]
    share_c = sum(err_c) / sum(in_c) if sum(in_c) > 0 else float("nan")
    # f of the circuit without its error nodes, on the circuit's own end points
    f_wo = circuit.faithfulness
    if any(n.kind == "errors" for n in circuit.nodes):
        clean_in = backend.as_inputs(pair, images, texts)
        resample = None
        if ablation == "resample":
            c_img, c_txt = backend.as_inputs(pair, corrupt_images, corrupt_texts, need_both=False)
            resample = {
                "image": c_img if c_img is not None else clean_in[0].roll(1, 0),
                "text": c_txt if c_txt is not None else clean_in[1].roll(1, 0),
            }
        reference = None
        if kwargs.get("reference") is not None:
            r_img, r_txt = backend.as_inputs(
                pair, kwargs["reference"].get("images"), kwargs["reference"].get("texts"),
                need_both=False,
            )  # fmt: skip
            reference = {k: v for k, v in (("image", r_img), ("text", r_txt)) if v is not None}
        mf = resolve_metric(metric)
        ev = CircuitEvaluator(
            pair, {"image": clean_in[0], "text": clean_in[1]}, fams, mf, metric_space(mf),
            ablation=ablation, reference=reference, resample=resample,
        )  # fmt: skip
        keep = torch.zeros(1, len(ev.nodes), dtype=torch.bool)
        col = {n: i for i, n in enumerate(ev.nodes)}
        for n in circuit.nodes:
            if n.kind != "errors":
                keep[0, col[n]] = True
        m_wo = float(ev.evaluate(keep).metric[0])
        f_wo = (m_wo - circuit.metric_empty) / (circuit.metric_model - circuit.metric_empty)
    return FeatureCircuit(
        circuit=circuit,
        attribution=att,
        error_share={h: att.error_share(h) for h in att.features},
        circuit_error_share=share_c,
        faithfulness_without_errors=f_wo,
        faithful_only_through_errors=bool(circuit.faithfulness >= target and f_wo < target),
        meta={"hooks": list(att.features)},
    )
