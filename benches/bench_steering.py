"""Steering sweep of 16 alphas x 8 concepts on the bundled model: one batched call vs the loop.

Model: ``synthetic:tiny`` (bundled). Units: the 50 image MLP neurons most selective for
each of the 8 colors (per-image max over patch tokens, exact AUROC on 200 scenes). Eval
set: 32 one-object test images with their captions and the 8 color prompts. Each
(concept, alpha) variant adds ``alpha`` times the sum of its neurons' unit-norm output
weight rows at their layers' ``mlp_out``.

- loop (reference): ``steering_sweep(method="serial")``: one image-tower forward of the 32
  images per (concept, alpha) with ``vf.Steer`` (128 forwards; the text tower once);
- batched: ``steering_sweep(method="batched")``: the 129 variants (clean + 128) stacked along
  the batch, ``max_rows=2048`` rows per forward (3 forwards), per-row deltas.

Both give the same table (<= 1e-5). Measured back to back in the same process.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
import torch

import vlmfast as vf
from vlmfast.causal import EvalSet, steering_sweep, top_units, unit_activations

COLORS = ("red", "green", "blue", "yellow", "purple", "orange", "cyan", "white")
ALPHAS = np.linspace(-4.0, 4.0, 16).tolist()


@pytest.fixture(scope="module")
def setup() -> tuple[Any, dict[str, Any], EvalSet]:
    pair = vf.load_pair("synthetic:tiny").eval()
    train = EvalSet.synthetic(200, seed=0).select(COLORS)
    acts = unit_activations(pair, images=train.images, hooks="image.blocks.*.mlp.post")
    scores = vf.scoring.score_units(
        acts.values,
        train.labels,
        concepts=vf.scoring.ConceptSet.make(COLORS, ["color"] * 8),
        meta=acts.meta(),
    )
    units = {c: top_units(scores, c, n=50) for c in COLORS}
    ev = EvalSet.synthetic(32, seed=1, max_objects=1).select(COLORS)
    return pair, units, ev


def test_steering_sweep_batched_vs_loop(benchmark: Any, setup: Any) -> None:
    pair, units, ev = setup
    t0 = time.perf_counter()
    loop = steering_sweep(pair, units, ALPHAS, eval_data=ev, method="serial")
    t_loop = time.perf_counter() - t0
    fast = benchmark.pedantic(
        lambda: steering_sweep(pair, units, ALPHAS, eval_data=ev, method="batched"),
        rounds=1,
        iterations=1,
    )
    t_fast = benchmark.stats.stats.min
    diff = float(np.nanmax(np.abs(fast.delta - loop.delta)))
    assert fast.delta.shape == (8, 16, 8, 8)
    assert diff <= 1e-5
    benchmark.extra_info.update(
        loop_s=t_loop, batched_s=t_fast, speedup=t_loop / t_fast, max_abs_diff=diff,
        threads=torch.get_num_threads(),
    )  # fmt: skip
    print(
        f"\nsteering sweep 16 alphas x 8 concepts, bundled model, 32 images: loop {t_loop:.2f} s, "
        f"batched {t_fast:.2f} s -> {t_loop / t_fast:.2f}x; max |diff| {diff:.2e}"
    )
