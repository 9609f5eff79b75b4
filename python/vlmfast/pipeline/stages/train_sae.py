"""Stage ``train-sae``: one top-k SAE per modality hook, into ``RUN/train-sae/<modality>/``.

The rows of a small store are held in memory (an image hook's patch rows, CLS rows left
out; a text hook's token rows) and reshuffled every epoch; a store over
``IN_MEMORY_BYTES`` streams shuffled batches from disk (``vlmfast.sae.data.store_batches``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from vlmfast.pipeline.runner import StageContext
from vlmfast.pipeline.stages._common import sae_hooks

IN_MEMORY_BYTES = 2 << 30
_TIMING_KEYS = ("tokens_per_s", "seconds", "elapsed", "time")


def open_store(ctx: StageContext) -> Any:
    from vlmfast.store import ActivationStore

    return ActivationStore.open(ctx.upstream("cache") / "store.zarr")


def training_rows(store: Any, hook: str) -> torch.Tensor:
    """The rows an SAE of ``hook`` trains on, in memory: patch rows (CLS left out) or tokens."""
    rows = store.read(hook).float()
    towers = store.attrs.get("towers") or {}
    if hook.startswith("image.") and (towers.get("image") or {}).get("cls_token"):
        rows = rows[torch.from_numpy(np.asarray(store.index(hook).position) != 0)]
    return rows


def shuffled(rows: torch.Tensor, batch: int, seed: int) -> Iterator[torch.Tensor]:
    """Endless batches of ``rows``, reshuffled every epoch."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(len(rows), generator=gen)
        for lo in range(0, len(order) - batch + 1, batch):
            yield rows[order[lo : lo + batch]]


def train_one(ctx: StageContext, store: Any, mod: str, hook: str) -> dict[str, Any]:
    from tqdm import tqdm

    from vlmfast.sae import SAETrainer, TopKSAE, TrainConfig, train
    from vlmfast.sae.schedule import convergence_warnings

    cfg = ctx.config
    s = cfg.sae
    device = s.device or cfg.model.device
    seed = cfg.run.seed
    d_in = int(store.width(hook))
    torch.manual_seed(seed)
    sae = TopKSAE(d_in=d_in, n_latents=s.n_latents, k=s.k, hook=hook).to(device)
    trainer = SAETrainer(sae, TrainConfig(seed=seed, lr=s.lr), total_steps=s.steps)
    closer = None
    if int(store.n_rows(hook)) * d_in * 4 <= IN_MEMORY_BYTES:
        batches: Iterator[torch.Tensor] = shuffled(training_rows(store, hook), s.batch_size, seed)
    else:
        from vlmfast.sae.data import store_batches

        stream = store_batches(store, hook, s.batch_size, seed=seed)
        batches, closer = stream, stream
    fvu: list[float] = []
    bar = tqdm(total=s.steps, unit="step", desc=f"train-sae {mod}", disable=not ctx.progress)
    try:
        logs = train(
            (b.to(device) for b in batches),
            [trainer],
            max_steps=s.steps,
            on_log=lambda ls: fvu.extend(float(x.metrics["fvu"]) for x in ls),
            on_step=lambda _done: bar.update(1),
        )
    finally:
        bar.close()
        if closer is not None:
            closer.close()
    sae.save(ctx.dir / mod)
    metrics: dict[str, Any] = logs[-1].to_json() if logs else {}
    shown = {
        k: v
        for k, v in (metrics.get("metrics") or metrics).items()
        if isinstance(v, int | float) and not any(t in k for t in _TIMING_KEYS)
    }
    warnings = convergence_warnings(fvu)
    ctx.log(f"  {mod} SAE on {hook}: " + "  ".join(f"{k}={v:.4g}" for k, v in shown.items()))
    for w in warnings:
        ctx.log(f"  warning: {w}")
    return {
        "hook": hook,
        "checkpoint": mod,
        "d_in": d_in,
        "n_latents": s.n_latents,
        "k": s.k,
        "steps": s.steps,
        "batch_size": s.batch_size,
        "metrics": shown,
        "fvu_curve": fvu,
        "warnings": warnings,
    }


def run(ctx: StageContext) -> dict[str, Any]:
    store = open_store(ctx)
    hooks = sae_hooks(ctx.config, ctx.pair())
    return {mod: train_one(ctx, store, mod, hook) for mod, hook in hooks.items()}
