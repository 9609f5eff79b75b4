"""Stage ``cache``: both towers' activations into ``RUN/cache/store.zarr`` (+ model quality)."""

from __future__ import annotations

from typing import Any

from vlmfast.pipeline.context import StageContext
from vlmfast.pipeline.stages._common import is_synthetic, neuron_hooks, resolve_hook, sae_hooks
from vlmfast.store import schema as S


def cached_hooks(ctx: StageContext) -> list[str]:
    """The SAE hooks, the neuron hooks and the extra hooks, resolved and deduplicated."""
    pair = ctx.pair()
    cfg = ctx.config
    hooks = [*sae_hooks(cfg, pair).values(), *neuron_hooks(cfg, pair)]
    hooks += [resolve_hook(h, pair) for h in cfg.hooks.extra]
    return list(dict.fromkeys(hooks))


def model_quality(ctx: StageContext) -> dict[str, Any] | None:
    """The held-out synthetic-benchmark table of the model (synthetic data only)."""
    cfg = ctx.config
    if not (cfg.quality.enabled and is_synthetic(cfg.data.spec)):
        return None
    from vlmfast.data.synthetic.evaluate import evaluate_model, format_table

    pair = ctx.pair()
    result = evaluate_model(
        pair, pair.tokenize, seed=cfg.run.seed + 1000, n=cfg.quality.eval_samples
    )
    ctx.log("  " + format_table(result).replace("\n", "\n  "))
    return result


def skipped_line(spec: str, skipped: dict[str, Any], shown: int = 3) -> str:
    """One log line: how many records the source skipped, why, and which (the first
    ``shown`` of each reason, each naming its file and line)."""
    from vlmfast.data.sources.folder import FORMAT_DOCS

    parts = []
    for reason, count in sorted(skipped["counts"].items()):
        examples = list(skipped.get("examples", {}).get(reason) or [])[:shown]
        parts.append(f"{reason} {count}" + (f" ({'; '.join(examples)})" if examples else ""))
    return (
        f"{spec}: {skipped['n_bad']} bad records skipped: {', '.join(parts)}; "
        f"the formats: {FORMAT_DOCS}"
    )


def run(ctx: StageContext) -> dict[str, Any]:
    from vlmfast.caching import CacheConfig, read_skip_report, run_cache

    cfg = ctx.config
    quality = model_quality(ctx)
    store = run_cache(
        CacheConfig(
            model=cfg.model.spec,
            pretrained=cfg.model.pretrained,
            data=cfg.data.spec,
            hooks=cached_hooks(ctx),
            out=ctx.dir / "store.zarr",
            positions=cfg.hooks.positions,
            batch_size=cfg.cache.batch_size,
            device=cfg.model.device,
            dtype=cfg.cache.dtype,
            limit=cfg.data.limit,
            concepts=cfg.concepts.labels,
            decode_workers=cfg.cache.decode_workers,
            overwrite=True,
            chunk_rows=cfg.cache.chunk_rows,
            compression=cfg.cache.compression,
            progress=ctx.progress,
        ),
        log=lambda _msg: None,
    )
    skipped = read_skip_report(ctx.dir / "store.zarr")
    if skipped:
        ctx.log("  " + skipped_line(cfg.data.spec, skipped))
    hooks = {h: {"rows": int(store.n_rows(h)), "width": int(store.width(h))} for h in store.hooks}
    for hook, info in hooks.items():
        ctx.log(f"  {hook:<28} rows={info['rows']:>7} width={info['width']}")
    concepts = store.attrs.get(S.ATTR_CONCEPTS) or {}
    names = list(concepts.get(S.CONCEPT_NAMES) or [])
    kinds = list(concepts.get(S.CONCEPT_KINDS) or [])
    per_kind = {k: kinds.count(k) for k in dict.fromkeys(kinds)}
    return {
        "store": "store.zarr",
        "model": cfg.model.spec,
        "data": cfg.data.spec,
        "hooks": hooks,
        "skipped_records": skipped,
        "samples": int((store.attrs.get(S.ATTR_PROGRESS) or {}).get(S.PROGRESS_SAMPLES_DONE, 0)),
        "concepts": {"n": len(names), "per_kind": per_kind, "names": names},
        "quality": quality,
    }
