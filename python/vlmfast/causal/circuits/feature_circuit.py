"""Sparse feature circuits (Marks et al. 2024) on spliced TopK SAEs, with error nodes.

    fc = vf.causal.find_feature_circuit(pair, px, tok, corrupt_texts=tok_c,
                                        saes={"text.blocks.1.resid_pre": sae},
                                        ablation="resample", target=0.8)
    fc.nodes                          # SAE features and error nodes of the circuit
    fc.error_share                    # {hook: share of |attribution| on its error nodes}
    fc.faithful_only_through_errors   # True: f(C) >= target but f(C minus errors) < target

**Splice.** At each hook ``h`` of ``saes`` the activation is ``x = decode(z) + err`` with
``z = encode(x)`` (dense codes) and ``err = x - decode(z)`` (``feature_family.py``). The
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
a component family (:func:`feature_families`, ``features.py``), then evaluates the circuit once more with
its error nodes ablated too: ``faithfulness_without_errors``. A circuit whose faithfulness
reaches ``target`` only with its error nodes (``faithful_only_through_errors``) explains
nothing in terms of features; ``circuit_error_share`` is the share of the circuit's
``|attribution|`` on its error nodes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from vlmfast.causal.circuits.engine import CircuitEvaluator
from vlmfast.causal.circuits.feature_family import SAEFamily
from vlmfast.causal.circuits.features import (
    FeatureAttribution,
    check_saes,
    feature_attribution,
    feature_families,
)
from vlmfast.causal.circuits.result import Circuit
from vlmfast.causal.circuits.search import find_circuit
from vlmfast.causal.circuits.types import CircuitNode
from vlmfast.causal.core import backend
from vlmfast.causal.core.conventions import TOWERS
from vlmfast.causal.core.jsonsafe import json_safe
from vlmfast.causal.core.metrics import Metric, metric_space, resolve_metric
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
        """Returns the circuit's :meth:`Circuit.to_dict` plus the error-node diagnostics
        (shares as fractions in [0, 1]) and the feature / error attributions (metric units)."""
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
        """Returns ``to_dict`` as JSON (NaN / inf written as null)."""
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

    Returns:
        The circuit and its error-node diagnostics (error shares and faithfulness as
            fractions), as a :class:`FeatureCircuit`.

    Raises:
        InputError: ``components`` or ``families`` passed, bad ``saes``, or any error of
            :func:`find_circuit`.
    """
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
        f_wo = _without_errors(
            pair, circuit, fams, (images, texts, corrupt_images, corrupt_texts),
            metric, ablation, kwargs.get("reference"),
        )  # fmt: skip
    return FeatureCircuit(
        circuit=circuit,
        attribution=att,
        error_share={h: att.error_share(h) for h in att.features},
        circuit_error_share=share_c,
        faithfulness_without_errors=f_wo,
        faithful_only_through_errors=bool(circuit.faithfulness >= target and f_wo < target),
        meta={"hooks": list(att.features)},
    )


def _without_errors(
    pair: Any,
    circuit: Circuit,
    fams: list[SAEFamily],
    raw: tuple[Any, Any, Any, Any],
    metric: str | Metric,
    ablation: str,
    reference: dict[str, Any] | None,
) -> float:
    """f of ``circuit`` with its error nodes ablated too, on the circuit's end points."""
    images, texts, corrupt_images, corrupt_texts = raw
    clean_in = backend.as_inputs(pair, images, texts)
    resample = None
    if ablation == "resample":
        c_img, c_txt = backend.as_inputs(pair, corrupt_images, corrupt_texts, need_both=False)
        resample = {
            "image": c_img if c_img is not None else clean_in[0].roll(1, 0),
            "text": c_txt if c_txt is not None else clean_in[1].roll(1, 0),
        }
    ref = None
    if reference is not None:
        r_img, r_txt = backend.as_inputs(
            pair, reference.get("images"), reference.get("texts"), need_both=False
        )
        ref = {k: v for k, v in (("image", r_img), ("text", r_txt)) if v is not None}
    mf = resolve_metric(metric)
    ev = CircuitEvaluator(
        pair, {"image": clean_in[0], "text": clean_in[1]}, fams, mf, metric_space(mf),
        ablation=ablation, reference=ref, resample=resample,
    )  # fmt: skip
    keep = torch.zeros(1, len(ev.nodes), dtype=torch.bool)
    col = {n: i for i, n in enumerate(ev.nodes)}
    for n in circuit.nodes:
        if n.kind != "errors":
            keep[0, col[n]] = True
    m_wo = float(ev.evaluate(keep).metric[0])
    return (m_wo - circuit.metric_empty) / (circuit.metric_model - circuit.metric_empty)
