"""The evaluation step of stage ``train-sae``: the SAE suite of each trained SAE.

``evaluate_saes(ctx, store, trained)`` runs :func:`vlmfast.sae.evaluate_suite` on each
SAE the stage trained (``RUN/train-sae/<modality>/``) and writes its JSON to
``RUN/train-sae/<modality>/eval.json`` (:data:`EVAL_FILE`), which the report's SAE
section and the SAE's dashboards read. Reconstruction: the store's rows of the SAE's hook
(the rows it trained on: the stage trains on every row of the store, so these are
*training* rows; at most :data:`EVAL_MAX_ROWS`). Downstream: the first
:data:`EVAL_PAIRS` pairs of the run's data with the SAE spliced at its hook.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlmfast.pipeline.context import StageContext
from vlmfast.pipeline.stages._common import read_pairs

EVAL_FILE = "eval.json"
"""The suite's JSON in each SAE's folder."""
EVAL_MAX_ROWS = 200_000
"""Rows of the store evaluated per SAE."""
EVAL_PAIRS = 128
"""Image-caption pairs of the downstream metrics."""
EVAL_BOOT = 500
"""Bootstrap resamples of the downstream intervals."""


def evaluate_one(ctx: StageContext, store: Any, folder: Path, pairs: Any) -> dict[str, Any]:
    """The suite of the SAE in ``folder``, written to ``folder/eval.json``; its headline."""
    from vlmfast.sae import SuiteConfig, evaluate_suite, load
    from vlmfast.sae.downstream import DownstreamConfig

    sae = load(folder)
    cfg = SuiteConfig(
        max_rows=EVAL_MAX_ROWS,
        downstream=DownstreamConfig(n_boot=EVAL_BOOT, seed=ctx.config.run.seed),
    )
    report = evaluate_suite(
        sae,
        store=store,
        pair=ctx.pair() if pairs is not None else None,
        images=None if pairs is None else pairs.images,
        texts=None if pairs is None else pairs.captions,
        config=cfg,
    )
    result = report.to_dict()
    result["split"] = "train"
    (folder / EVAL_FILE).write_text(_dumps(result))
    return headline(result)


def _dumps(result: dict[str, Any]) -> str:
    import json

    return json.dumps(result, indent=1, allow_nan=False) + "\n"


def headline(result: dict[str, Any]) -> dict[str, Any]:
    """FVU, L0, dead fraction and (with a model) loss recovered and KL of a suite JSON."""
    rec = (result.get("reconstruction") or {}).get("overall") or {}
    down = result.get("downstream") or {}
    out = {k: rec.get(k) for k in ("fvu", "l0_mean", "cosine_mean", "dead_fraction")}
    if down:
        out["loss_recovered"] = down["loss_recovered"]["value"]
        out["kl_spliced"] = down["kl_spliced"]["value"]
    return out


def evaluate_saes(ctx: StageContext, store: Any, trained: dict[str, Any]) -> dict[str, Any]:
    """Evaluates the modality SAEs of the stage's result ``trained`` (``{"image": {...},
    "text": {...}}``; other keys, e.g. ``hooks``, are left alone), writes each one's
    ``eval.json`` and adds its headline under ``"eval"``; returns ``trained``."""
    mods = [m for m in ("image", "text") if isinstance(trained.get(m), dict)]
    if not mods:
        return trained
    pairs = read_pairs(ctx, ctx.config.data.spec, EVAL_PAIRS, "train-sae eval", minimum=2)
    for mod in mods:
        entry = trained[mod]
        folder = ctx.dir / str(entry.get("checkpoint", mod))
        entry["eval"] = evaluate_one(ctx, store, folder, pairs)
        shown = "  ".join(f"{k}={v:.4g}" for k, v in entry["eval"].items() if v is not None)
        ctx.log(f"  {mod} SAE suite ({EVAL_FILE}): {shown}")
    return trained
