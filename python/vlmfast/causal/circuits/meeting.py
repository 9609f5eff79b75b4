"""Where the two towers meet: each tower's projection into the shared space, then the logit.

    meet = vf.causal.circuits.meeting.meeting_point(pair, px, tok, px_c, tok_c)
    edges = route_through_embeddings(circuit_edges(...), meet)
    # u -> "image.embed" / "text.embed" (was u -> "logit"), then "image.embed" -> "logit"

A circuit's nodes reach the pair's score only through their tower's projected embedding
(``image.embed`` / ``text.embed``, the rows the logit is computed from), so every edge
``u -> logit`` of ``circuit_edges`` is an edge ``u -> <tower>.embed``: the same effect,
re-addressed (a node's outgoing edges still sum to its AtP attribution).

The **embedding node**'s own edge into the logit is its attribution in the project's
denoising convention: ``A_t = <dm/de_t, e_t(clean) - e_t(corrupt)>`` at the corrupt run,
the other tower at corrupt (what ``vf.causal.attribute`` gives a component). Beside it,
:class:`Meeting` keeps the exact per-tower effect ``m(clean t, corrupt other) - m(corrupt)``,
the total ``m(clean) - m(corrupt)`` and the **interaction** ``total - sum_t exact_t``
(the part only both towers together give: the logit is bilinear in the two embeddings).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from vlmfast.causal.circuits.types import EMBED, LOGIT, CircuitEdge
from vlmfast.causal.core import backend
from vlmfast.causal.core.conventions import TOWERS
from vlmfast.causal.core.inputs import prepare_inputs
from vlmfast.causal.core.metrics import Metric, metric_space, resolve_metric, similarity


@dataclass(frozen=True)
class Meeting:
    """The two embeddings' effects on the metric (denoising: corrupt -> clean)."""

    attribution: dict[str, float]
    """Per tower, ``<dm/de, e(clean) - e(corrupt)>`` with the other tower at corrupt."""
    exact: dict[str, float]
    """Per tower, ``m(clean tower, corrupt other) - m(corrupt)``."""
    total: float
    """``m(clean) - m(corrupt)``."""
    interaction: float
    """``total - exact["image"] - exact["text"]``."""
    corrupted: tuple[str, ...]
    """The towers whose inputs differ between clean and corrupt."""

    def labels(self) -> dict[str, str]:
        """Drawing annotations: the embedding nodes' exact effects, the logit's total and
        interaction."""
        out = {EMBED[t]: f"\u0394m {self.exact[t]:+.3g}" for t in TOWERS}
        out[LOGIT] = f"\u0394m {self.total:+.3g}, interaction {self.interaction:+.3g}"
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "attribution": dict(self.attribution),
            "exact": dict(self.exact),
            "total": self.total,
            "interaction": self.interaction,
            "corrupted": list(self.corrupted),
        }


def meeting_point(
    pair: Any,
    images: Any,
    texts: Any,
    corrupt_images: Any = None,
    corrupt_texts: Any = None,
    *,
    metric: str | Metric = "score",
) -> Meeting:
    """The embeddings' attributions and exact effects (see the module doc): two forwards
    per tower and one backward.

    Raises:
        InputError: no corrupt inputs, unpaired shapes, or the pair in training mode.
    """
    metric_fn = resolve_metric(metric)
    space = metric_space(metric_fn)
    inputs, changed = prepare_inputs(
        pair, images, texts, corrupt_images, corrupt_texts, what="vf.causal.circuit meeting"
    )
    scale, bias = backend.logit_scale_bias(pair)

    def score(img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = metric_fn(similarity(img, txt, scale, bias, space))
        return out

    with torch.no_grad():
        clean = {t: backend.embed(pair, t, inputs[t][1]) for t in TOWERS}
        base = {t: backend.embed(pair, t, inputs[t][0]) for t in TOWERS}
        m_base = float(score(base["image"], base["text"]))
        exact = {
            "image": float(score(clean["image"], base["text"])) - m_base,
            "text": float(score(base["image"], clean["text"])) - m_base,
        }
        total = float(score(clean["image"], clean["text"])) - m_base
    leaves = {t: base[t].clone().requires_grad_() for t in TOWERS}
    with torch.enable_grad():
        m = score(leaves["image"], leaves["text"])
        grads = torch.autograd.grad(m, [leaves[t] for t in TOWERS])
    attribution = {
        t: float((g.float() * (clean[t] - base[t]).float()).sum())
        for t, g in zip(TOWERS, grads, strict=True)
    }
    return Meeting(
        attribution=attribution,
        exact=exact,
        total=total,
        interaction=total - exact["image"] - exact["text"],
        corrupted=tuple(t for t in TOWERS if changed[t]),
    )


def route_through_embeddings(
    edges: Sequence[CircuitEdge], meeting: Meeting, towers: Sequence[str] = ()
) -> list[CircuitEdge]:
    """``edges`` with every ``u -> logit`` re-addressed to ``u``'s tower's embedding node,
    plus ``<tower>.embed -> logit`` (its attribution) for every tower with a node among
    ``edges`` or named in ``towers``."""
    out: list[CircuitEdge] = []
    seen = set(towers)
    for e in edges:
        tower = e.src.split(".", 1)[0]
        seen.add(tower)
        out.append(CircuitEdge(e.src, EMBED[tower], e.effect) if e.dst == LOGIT else e)
    for t in TOWERS:
        if t in seen:
            out.append(CircuitEdge(EMBED[t], LOGIT, meeting.attribution[t]))
    return out


__all__ = ["Meeting", "meeting_point", "route_through_embeddings"]
