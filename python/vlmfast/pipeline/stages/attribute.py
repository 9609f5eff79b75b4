"""Stage ``attribute``: attribution patching of every residual position, head and neuron
(``vf.causal.attribute``), with the exact head sweep beside it when configured:
``RUN/attribute/result.json`` (``AttributionResult.to_dict`` + ``run``, ``compare_exact_heads``
and ``exact_heads``), ``attribution.parquet`` and ``heatmaps.png`` / ``.svg``."""

from __future__ import annotations

from typing import Any

from vlmfast.pipeline.context import StageContext
from vlmfast.pipeline.stages._common import read_pairs, skipped


def _top_heads(grid: Any, n: int = 5) -> list[dict[str, Any]]:
    """The heads whose patching moves the metric most (largest |effect|)."""
    import torch

    g = grid.detach().cpu().double()
    n_heads = g.shape[1]
    order = torch.argsort(g.abs().flatten(), descending=True)[:n].tolist()
    return [
        {"layer": k // n_heads, "head": k % n_heads, "effect": float(g.flatten()[k])} for k in order
    ]


def run(ctx: StageContext) -> dict[str, Any]:
    import vlmfast as vf
    from vlmfast.causal.core import corrupt_inputs, json_safe
    from vlmfast.tables import write_table

    cfg = ctx.config
    a = cfg.attribute
    pair = ctx.pair()
    spec = a.data or cfg.data.spec
    pairs = read_pairs(ctx, spec, a.pairs, "[attribute]")
    records = pairs.records
    inputs = corrupt_inputs(pair, records, a.corrupt, seed=cfg.run.seed, noise_std=a.noise_std)
    att = vf.causal.attribute(
        pair, **inputs, components=a.components, towers=a.towers, method=a.method,
        null=a.null, seed=cfg.run.seed,
    )  # fmt: skip
    data = att.to_dict()
    data["run"] = {
        "model": cfg.model.spec,
        "data": spec,
        "pairs": len(records),
        "corrupt": a.corrupt,
        "noise_std": a.noise_std if a.corrupt == "image-noise" else None,
        "table": "attribution.parquet",
        **skipped(pairs),
    }
    data["compare_exact_heads"] = None
    data["exact_heads"] = None
    ctx.log(
        f"  {att.method}: m(clean) {att.metric_clean:.4g}, m(corrupt) {att.metric_corrupt:.4g}; "
        "completeness gap " + ", ".join(f"{k} {v:+.4g}" for k, v in att.completeness_gap.items())
    )
    if a.exact:
        exact = vf.causal.exact_effects(pair, **inputs, components=("heads",), towers=a.towers)
        comparison = {f"{t}/{k}": v for (t, k), v in att.compare(exact).items()}
        data["compare_exact_heads"] = comparison
        data["exact_heads"] = {
            f"{t}/{k}": {"effect": v.tolist(), "top": _top_heads(v)} for (t, k), v in exact.items()
        }
        for key, c in comparison.items():
            ctx.log(
                f"  vs exact {key}: Spearman {c['spearman']:.3f}, top-{int(c['k'])} overlap "
                f"{c['topk_overlap']:.2f}"
            )
        for key, v in data["exact_heads"].items():
            tops = ", ".join(f"L{h['layer']}.H{h['head']} {h['effect']:+.3f}" for h in v["top"])
            ctx.log(f"  exact head patching {key}: {tops}")
    write_table(att.table(), ctx.dir / "attribution")
    att.plot(ctx.dir / "heatmaps")
    return json_safe(data)
