"""Stage ``trace``: causal tracing of each tower (corrupt the tower's inputs, restore one
hidden state at a time), ``RUN/trace/result.json`` = ``{tower: TraceResult dict}``, with a
``localization`` entry per tower, and ``trace_<tower>.npz`` / ``.svg`` beside it."""

from __future__ import annotations

from typing import Any

import numpy as np

from vlmfast.pipeline.context import StageContext
from vlmfast.pipeline.stages._common import read_pairs, skipped


def localization(res: Any, frac: float = 0.5) -> dict[str, Any]:
    """Where the restored metric is: per kind, each layer's best recovery over the traced
    positions other than the image's CLS (restoring it late restores the output trivially;
    the text tower's EOT differs per caption, so no text position is left out), the peak layer, and the contiguous layer range around the peak whose best
    recovery is at least ``frac`` of the peak's."""
    pooled: set[int] = set()
    if res.tower == "image" and "CLS" in res.labels:
        pooled.add(res.labels.index("CLS"))
    out: dict[str, Any] = {"fraction_of_peak": frac, "kinds": {}}
    for kind, rec in res.recovery.items():
        table = np.asarray(rec, dtype=np.float64)
        if kind == "heads":
            cols = list(range(table.shape[1]))
        else:
            cols = [j for j in range(table.shape[1]) if j not in pooled]
        profile = np.nanmax(table[:, cols], axis=1) if cols else np.zeros(table.shape[0])
        peak = int(np.nanargmax(profile))
        lo = hi = peak
        while lo > 0 and profile[lo - 1] >= frac * profile[peak]:
            lo -= 1
        while hi < len(profile) - 1 and profile[hi + 1] >= frac * profile[peak]:
            hi += 1
        out["kinds"][kind] = {
            "profile": profile.tolist(),
            "peak_layer": int(res.layers[peak]),
            "peak_recovery": float(profile[peak]),
            "layer_range": [int(res.layers[lo]), int(res.layers[hi])],
            "n_layers": len(res.layers),
        }
    return out


def run(ctx: StageContext) -> dict[str, Any]:
    from tqdm import tqdm

    from vlmfast.causal.tracing import prepare_counts, trace
    from vlmfast.causal.tracing.arrays import save_trace_arrays

    cfg = ctx.config
    t = cfg.trace
    pair = ctx.pair()
    pairs = read_pairs(ctx, t.data or cfg.data.spec, t.pairs, "[trace]")
    images, texts = pair.preprocess(pairs.images), pair.tokenize(pairs.captions)
    out: dict[str, Any] = {}
    for tower in t.towers:
        counts = prepare_counts(pair, tower, images if tower == "image" else texts, t.kinds)
        total = pair.config.tower(tower).layers * sum(counts.values())
        with tqdm(
            total=total, unit="restore", desc=f"trace {tower}", disable=not ctx.progress
        ) as bar:
            res = trace(
                pair, images, texts, tower, noise=t.noise, samples=t.samples, seed=cfg.run.seed,
                kinds=t.kinds, window=t.window, metric=t.metric, null=t.null,
                progress=bar.update,
            )  # fmt: skip
        res.meta.update(
            {"model": cfg.model.spec, "data": t.data or cfg.data.spec, "n": len(pairs)}
            | skipped(pairs)
        )
        save_trace_arrays(res, ctx.dir / f"trace_{tower}.npz")
        _plot(res, ctx.dir / f"trace_{tower}.svg")
        ctx.log("  " + res.summary().replace("\n", "\n  "))
        entry = res.to_dict()
        entry["localization"] = localization(res)
        for kind, loc in entry["localization"]["kinds"].items():
            ctx.log(
                f"  {tower} {kind}: peak recovery {loc['peak_recovery']:.3f} at layer "
                f"{loc['peak_layer']}, layers {loc['layer_range'][0]}-{loc['layer_range'][1]} "
                f"of {loc['n_layers']}"
            )
        out[tower] = entry
    return out


def _plot(res: Any, path: Any) -> None:
    res.plot().savefig(path, metadata={"Date": None})  # a bare Figure: nothing to close
