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
  differentiating its softmax (``atp_star.py``: the value part, the query at ``p`` patched
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

``null=K`` adds ``att.null``: a random-subset false-negative estimate (see ``exact.py``).
Nothing is written anywhere; the pair must be in eval mode.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from vlmfast.causal.attribution.engine import AttributionEngine
from vlmfast.causal.attribution.exact import exact_effects, null_estimate
from vlmfast.causal.attribution.options import (
    ATTRIBUTION_KINDS,
    DIRECTIONS,
    METHODS,
    AttributionConfig,
    attribution_inputs,
)
from vlmfast.causal.attribution.result import AttributionResult
from vlmfast.causal.core import backend
from vlmfast.causal.core.conventions import TOWERS, check_choice
from vlmfast.causal.core.metrics import metric_space, resolve_metric, similarity
from vlmfast.errors import InputError

__all__ = ["ATTRIBUTION_KINDS", "DIRECTIONS", "METHODS", "attribute", "exact_effects"]


def attribute(
    pair: Any,
    images: Any,
    texts: Any,
    corrupt_images: Any = None,
    corrupt_texts: Any = None,
    *,
    config: AttributionConfig | None = None,
    **options: Any,
) -> AttributionResult:
    """Attribution scores of every component of the chosen kinds and towers.

    Args:
        pair: a HookedPair in eval mode.
        images, texts: the clean inputs (pixels / token ids, or PIL images / strings),
            image ``i`` paired with caption ``i``.
        corrupt_images, corrupt_texts: the corrupted inputs, same shapes; ``None`` = that
            tower is not corrupted (at least one must be given).
        config: an :class:`AttributionConfig` (every option, documented per field).
        **options: the same options as keywords (``components=``, ``towers=``,
            ``method=``, ``metric=``, ``direction=``, ``steps=``, ``null=``, ``seed=``,
            ``max_rows=``); they replace ``config``'s fields.

    Returns:
        The attribution (an :class:`AttributionResult`): per tower and kind, the
            estimated effect on the metric of patching each component (metric units), its
            completeness gap, and the null's false-negative estimate when ``null > 0``.

    Raises:
        InputError: an option out of range, or inputs that do not pair up.
        TypeError: an unknown option.
    """
    cfg = AttributionConfig.build(config, options)
    components, towers, method, metric = cfg.components, cfg.towers, cfg.method, cfg.metric
    direction, steps, null, seed, max_rows = (
        cfg.direction, cfg.steps, cfg.null, cfg.seed, cfg.max_rows
    )  # fmt: skip
    check_choice(method, METHODS, "method")
    if method == "ig" and (not isinstance(steps, int) or steps < 1):
        raise InputError(f"steps must be a positive int for method='ig', got {steps!r}")
    if not isinstance(null, int) or null < 0:
        raise InputError(f"null must be an int >= 0 (components per layer), got {null!r}")
    if max_rows < 1:
        raise InputError(f"max_rows must be >= 1, got {max_rows}")
    metric_fn = resolve_metric(metric)
    space = metric_space(metric_fn)
    inputs, changed, kinds, tower_list = attribution_inputs(
        pair, images, texts, corrupt_images, corrupt_texts, components, towers, direction
    )
    scale, bias = backend.logit_scale_bias(pair)

    def score(img: Tensor, txt: Tensor) -> Tensor:
        return metric_fn(similarity(img, txt, scale, bias, space))

    engine = AttributionEngine(pair, inputs, changed, tower_list, kinds, method, score, direction)
    result = engine.run(steps, max_rows)
    result.meta.update(
        metric=metric if isinstance(metric, str) else repr(metric_fn),
        model=getattr(pair, "spec", "") or pair.config.name,
        n_pairs=int(inputs["image"][0].shape[0]),
        changed=[t for t in TOWERS if changed[t]],
    )
    if null:
        result.null = null_estimate(
            pair, result, inputs, metric_fn, k=null, seed=seed, max_rows=max_rows, changed=changed
        )
    return result
