"""SAE features and error nodes as circuit candidates: the SAE check, AtP scores, families.

The splice, the nodes and the attribution rule are described in ``feature_circuit.py``;
this module holds the parts ``find_circuit`` (``components=("features",)``) and
``circuit_edges`` need without the feature-circuit search itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from vlmfast.causal.attribution.capture import Capture
from vlmfast.causal.circuits.feature_family import ExactContext, SAEFamily, block_of, sae_codes
from vlmfast.causal.core import backend
from vlmfast.causal.core.conventions import TOWERS, check_metric_output
from vlmfast.causal.core.inputs import prepare_inputs
from vlmfast.causal.core.limits import DEFAULT_MAX_ROWS
from vlmfast.causal.core.metrics import Metric, metric_space, resolve_metric, similarity
from vlmfast.causal.core.units import hook_width
from vlmfast.errors import InputError

__all__ = [
    "FeatureAttribution",
    "SAEFamily",
    "check_saes",
    "feature_attribution",
    "feature_families",
]


def check_saes(
    pair: Any, saes: Mapping[str, Any], towers: Sequence[str] = TOWERS
) -> dict[str, Any]:
    """Returns ``saes`` restricted to ``towers``, checked: block hooks of ``pair``, matching
    widths, at most one SAE per (tower, block).

    Raises:
        InputError: ``saes`` is empty, or a hook is not a block hook of ``pair``, holds
            no TopKSAE, has the wrong width or shares its block; or no hook is in ``towers``.
    """
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
        """Returns the fraction ``sum |A_e| / (sum |A_f| + sum |A_e|)`` in [0, 1] at ``hook``
        (nan if everything is 0)."""
        f = float(self.features[hook].abs().sum())
        e = float(self.errors[hook].abs().sum())
        return e / (f + e) if f + e > 0 else float("nan")

    def completeness(self, hook: str) -> tuple[float, float]:
        """Returns ``(sum of the hook's node scores, the hook's AtP)`` in metric units:
        equal up to rounding."""
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
    """Returns the AtP scores (metric units) of the features and error nodes of every SAE
    in ``saes`` (module doc), as a :class:`FeatureAttribution`.

    Raises:
        InputError: bad ``saes`` or ``metric``, or inputs that do not pair up.
    """
    saes = check_saes(pair, saes)
    metric_fn = resolve_metric(metric)
    space = metric_space(metric_fn)
    inputs, _ = prepare_inputs(pair, images, texts, corrupt_images, corrupt_texts)
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
    max_rows: int = DEFAULT_MAX_ROWS,
) -> list[SAEFamily]:
    """Returns one ``SAEFamily`` per SAE of ``towers`` with its AtP scores (for ``find_circuit``).

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
