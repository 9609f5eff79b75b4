"""Exact patching in attribution's layout, and the random-subset false-negative null.

``exact_effects`` runs ``patch_sweep(base, source, normalize="delta")`` for every
(tower, kind): the quantity an attribution score estimates, computed exactly.

**Null** (``attribute(..., null=K)``): for every (tower, kind) and every layer, ``K``
components are drawn uniformly without replacement (``torch.Generator`` seeded with
``seed``, keys and layers in a fixed order, so the draw is deterministic) and patched
exactly. Over that sample:

* a component has a *large* exact effect when ``|exact| >= q75`` (the 75th percentile of
  the sampled ``|exact|``, and > 0);
* its attribution is *small* when its ranking score (``|score|``, or GradDrop for atp*)
  is below the median ranking score of *all* components of that tower and kind, i.e. the
  attribution would not put it in the top half;
* ``false_negative_rate = #(large and small) / #large``.

The sample is uniform, so the rate estimates how often a strong component (by the
sample's own standard) is missed by a top-half cut of the attribution ranking. A tower
that the corruption does not change has no effects and gets no entry.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from vlmfast.causal.attribution.capture import KIND_POINT, KIND_SWEEP
from vlmfast.causal.attribution.options import ATTRIBUTION_KINDS, attribution_inputs
from vlmfast.causal.attribution.result import AttributionResult, NullEstimate, spearman
from vlmfast.causal.core import backend
from vlmfast.causal.core.conventions import TOWERS
from vlmfast.causal.core.limits import DEFAULT_MAX_ROWS
from vlmfast.causal.core.metrics import Metric, resolve_metric
from vlmfast.causal.patching.sweep import patch_sweep

LARGE_QUANTILE = 0.75
SMALL_QUANTILE = 0.5

Key = tuple[str, str]


def _sweep(
    pair: Any,
    inputs: dict[str, tuple[Tensor, Tensor]],
    tower: str,
    kind: str,
    metric: Metric,
    max_rows: int,
    layers: Sequence[int] | None = None,
    indices: Sequence[int] | None = None,
) -> Tensor:
    base_img, src_img = inputs["image"]
    base_txt, src_txt = inputs["text"]
    source = {"images": src_img} if tower == "image" else {"texts": src_txt}
    return patch_sweep(
        pair,
        base_img,
        base_txt,
        source,
        metric,
        component=KIND_SWEEP[kind],
        tower=tower,
        point=KIND_POINT[kind],
        layers=layers,
        indices=indices,
        normalize="delta",
        max_rows=max_rows,
    )


def exact_effects(
    pair: Any,
    images: Any,
    texts: Any,
    corrupt_images: Any = None,
    corrupt_texts: Any = None,
    *,
    components: Sequence[str] = ATTRIBUTION_KINDS,
    towers: Sequence[str] = TOWERS,
    metric: str | Metric = "score",
    direction: str = "denoising",
    max_rows: int = DEFAULT_MAX_ROWS,
) -> dict[Key, Tensor]:
    """Returns the exact single-component patching effects in ``attribute``'s layout and sign.

    ``{(tower, kind): Tensor[layers, components]}`` = ``m(base with the component from
    source) - m(base)`` (base = corrupt when denoising; metric units, e.g. logits), from
    ``patch_sweep``.

    Raises:
        InputError: inputs that do not pair up, or an unknown component, tower or direction.
    """
    inputs, changed, kinds, tower_list = attribution_inputs(
        pair, images, texts, corrupt_images, corrupt_texts, components, towers, direction
    )
    metric_fn = resolve_metric(metric)
    out: dict[Key, Tensor] = {}
    for tower in tower_list:
        for kind in kinds:
            if changed[tower]:
                out[tower, kind] = _sweep(pair, inputs, tower, kind, metric_fn, max_rows)
            else:
                n = backend.n_components(pair, tower, kind, inputs[tower][0])
                out[tower, kind] = torch.zeros(backend.n_layers(pair, tower), n)
    return out


def null_estimate(
    pair: Any,
    result: AttributionResult,
    inputs: dict[str, tuple[Tensor, Tensor]],
    metric: Metric,
    *,
    k: int,
    seed: int,
    max_rows: int,
    changed: dict[str, bool],
) -> dict[Key, NullEstimate]:
    """Returns the random-subset false-negative estimate of every changed (tower, kind)."""
    gen = torch.Generator().manual_seed(seed)
    out: dict[Key, NullEstimate] = {}
    for key in sorted(result.scores):
        tower, kind = key
        scores = result.scores[key]
        ranking = result.ranking(key)
        n_layers, n_comp = scores.shape
        draws = [torch.randperm(n_comp, generator=gen)[: min(k, n_comp)] for _ in range(n_layers)]
        if not changed[tower]:
            continue
        layers: list[int] = []
        idx: list[int] = []
        exact: list[float] = []
        for layer, chosen in enumerate(draws):
            chosen_list = sorted(chosen.tolist())
            eff = _sweep(pair, inputs, tower, kind, metric, max_rows, [layer], chosen_list)[0]
            layers += [layer] * len(chosen_list)
            idx += chosen_list
            exact += eff.tolist()
        eff_t = torch.tensor(exact)
        rank_t = ranking[torch.tensor(layers), torch.tensor(idx)]
        att_t = scores[torch.tensor(layers), torch.tensor(idx)]
        large_thr = float(eff_t.abs().quantile(LARGE_QUANTILE))
        small_thr = float(ranking.flatten().quantile(SMALL_QUANTILE))
        large = (eff_t.abs() >= large_thr) & (eff_t.abs() > 0)
        missed = large & (rank_t < small_thr)
        n_large = int(large.sum())
        out[key] = NullEstimate(
            false_negative_rate=float(missed.sum()) / n_large if n_large else float("nan"),
            n_large=n_large,
            n_false_negative=int(missed.sum()),
            large_threshold=large_thr,
            small_threshold=small_thr,
            spearman=spearman(att_t, eff_t),
            layers=layers,
            indices=idx,
            exact=exact,
            attribution=att_t.tolist(),
        )
    return out
