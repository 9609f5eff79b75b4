"""Synthetic top-k codes and concept labels for the AUROC benchmarks."""

from __future__ import annotations

import numpy as np


def make_codes(
    n: int, n_features: int, k: int, seed: int = 0, index_dtype: type = np.int32
) -> tuple[np.ndarray, np.ndarray]:
    """``[n, k]`` distinct feature ids per row (a random permutation walked with a
    per-row stride) and ReLU-like values with some ties."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n_features).astype(index_dtype)
    idx = np.empty((n, k), dtype=index_dtype)
    step_max = max(1, n_features // k)
    for lo in range(0, n, 65536):
        hi = min(n, lo + 65536)
        start = rng.integers(0, n_features, size=(hi - lo, 1))
        step = rng.integers(1, step_max + 1, size=(hi - lo, 1))
        pos = (start + step * np.arange(k)[None, :]) % n_features
        idx[lo:hi] = perm[pos]
    vals = rng.exponential(1.0, size=(n, k)).astype(np.float32)
    vals = np.round(vals, 3)  # quantised: ties among nonzeros too
    vals[vals == 0] = 0.001
    return idx, vals


def make_labels(n: int, n_concepts: int, per_row: int = 3, seed: int = 1) -> np.ndarray:
    """``[n, n_concepts]`` bool with ``per_row`` positives per row (Zipf-like concept frequency)."""
    rng = np.random.default_rng(seed)
    w = 1.0 / np.arange(1, n_concepts + 1) ** 0.8
    w /= w.sum()
    labels = np.zeros((n, n_concepts), dtype=bool)
    for lo in range(0, n, 65536):
        hi = min(n, lo + 65536)
        cols = rng.choice(n_concepts, size=(hi - lo, per_row), p=w)
        np.put_along_axis(labels[lo:hi], cols, True, axis=1)
    return labels
