"""Fusion units for the ``cross-modal`` stage (:func:`vlmfast.crossmodal.fusion_units`).

Per object and color concept, the MLP neurons of the image tower most selective on
images and of the text tower most selective on captions (picked on half of the pairs of
``[crossmodal].fusion_data``, default ``[data]``), tested on the other half: ablating
each side's units, and both, lowers the logits of matching image-caption cells more than
of cells where one side only carries the concept (specificity, interval, random-unit
null), the interaction of the two sides, and image -> caption retrieval with every pair's
units ablated, beside the paper's -23% (a claim, shown by the report).
"""

from __future__ import annotations

from typing import Any

from vlmfast.pipeline.context import StageContext


def fusion(ctx: StageContext) -> dict[str, Any]:
    """The fusion result (``FusionResult.to_dict`` plus its source), or ``{"skipped": why}``."""
    from vlmfast.crossmodal import FusionConfig, FusionData, fusion_units

    cfg, cm = ctx.config, ctx.config.crossmodal
    if cm.fusion_pairs < 1:
        return {"skipped": "[crossmodal] fusion_pairs = 0"}
    spec = cm.fusion_data or cfg.data.spec
    pair = ctx.pair()
    data = FusionData.from_source(pair, spec, n=cm.fusion_pairs)
    fcfg = FusionConfig(
        n_units=cm.fusion_units, n_null=cm.fusion_null, n_boot=cm.n_boot, seed=cfg.run.seed
    )
    res = fusion_units(pair, data, fcfg)
    out = {"source": spec, **res.to_dict()}
    from vlmfast.pipeline.stages.crossmodal_text import format_fusion

    ctx.log(format_fusion(out))
    return out
