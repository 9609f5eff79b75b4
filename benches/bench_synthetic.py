"""Synthetic benchmark generation speed: numpy fast path vs the PIL reference renderer.

`make bench` prints min/median per round; the README records samples/s for the
fast path (scene + caption + negatives + rendered image) and its ratio to the
PIL reference measured in the same run.
"""

from __future__ import annotations

import numpy as np
import pytest

from vlmfast.data.synthetic.dataset import make_samples, render_batch
from vlmfast.data.synthetic.render import render_scene_pil

N = 5000


def _fast(n: int) -> np.ndarray:
    return render_batch(make_samples(0, "train", range(n)))


def _reference(n: int) -> np.ndarray:
    samples = make_samples(0, "train", range(n))
    return np.stack([render_scene_pil(s.scene) for s in samples])


@pytest.mark.benchmark(group="synthetic-generate")
def test_generate_fast_numpy(benchmark: pytest.FixtureRequest) -> None:
    out = benchmark.pedantic(_fast, args=(N,), rounds=3, iterations=1)  # type: ignore[attr-defined]
    assert out.shape == (N, 64, 64, 3)


@pytest.mark.benchmark(group="synthetic-generate")
def test_generate_reference_pil(benchmark: pytest.FixtureRequest) -> None:
    out = benchmark.pedantic(_reference, args=(N // 5,), rounds=1, iterations=1)  # type: ignore[attr-defined]
    assert out.shape == (N // 5, 64, 64, 3)
