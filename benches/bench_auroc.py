"""Exact AUROC table benchmarks (run by ``make bench``; or ``python benches/bench_auroc.py``).

Sparse: F=65,536 SAE features x C=200 concepts x N=1,000,000 rows, k=32, three
positive concepts per row. Baselines in the same run: sklearn ``roc_auc_score``
and torchmetrics' exact ``binary_auroc`` (``thresholds=None``) per (feature,
concept) pair on the dense column, timed on a few pairs and extrapolated to
the F x C table. Dense: 3,072 units x 200 concepts x 100,000 rows.

Peak memory beyond the inputs is read from ``VmHWM`` after resetting it
(``/proc/self/clear_refs``), minus the resident size before the call.
Set ``VLMFAST_BENCH_N`` to shrink N for a quick run.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import pytest

import vlmfast as vf


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
        np.put_along_axis(labels[lo:hi], cols, np.True_, axis=1)
    return labels


N = int(os.environ.get("VLMFAST_BENCH_N", 1_000_000))
F, K, C = 65_536, 32, 200
DENSE_N, DENSE_F = int(os.environ.get("VLMFAST_BENCH_DENSE_N", 100_000)), 3072


def _mem() -> tuple[float, float]:
    """(VmRSS, VmHWM) in MiB."""
    vals = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                vals[key] = int(rest.split()[0]) / 1024
    return vals["VmRSS"], vals["VmHWM"]


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def measure(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float, float]:
    """(result, wall seconds, peak MiB beyond the resident size before the call)."""
    _reset_peak()
    before, _ = _mem()
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    dt = time.perf_counter() - t0
    _, peak = _mem()
    return out, dt, peak - before


def per_pair_baselines(
    idx: np.ndarray, vals: np.ndarray, labels: np.ndarray, n_pairs: int = 4
) -> dict[str, float]:
    """Seconds per (feature, concept) pair for sklearn and torchmetrics on N rows."""
    from sklearn.metrics import roc_auc_score

    out: dict[str, float] = {}
    n = idx.shape[0]
    feats = np.unique(idx[:1000].ravel())[:n_pairs]
    cols = []
    for f in feats:
        col = np.zeros(n, np.float32)
        rows, pos = np.nonzero(idx == f)
        col[rows] = vals[rows, pos]
        cols.append(col)
    concept = int(np.argmax(labels[:1000].sum(0)))
    y = labels[:, concept]
    t0 = time.perf_counter()
    for col in cols:
        roc_auc_score(y, col)
    out["sklearn"] = (time.perf_counter() - t0) / len(cols)
    try:
        import torch
        from torchmetrics.functional.classification import binary_auroc

        yt = torch.from_numpy(y.astype(np.int64))
        t0 = time.perf_counter()
        for col in cols:
            binary_auroc(torch.from_numpy(col), yt, thresholds=None)
        out["torchmetrics"] = (time.perf_counter() - t0) / len(cols)
    except ImportError:
        pass
    return out


@pytest.fixture(scope="module")
def sparse_case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    idx, vals = make_codes(N, F, K)
    return idx, vals, make_labels(N, C)


def test_sparse_auroc_full_table(benchmark: Any, sparse_case: Any) -> None:
    idx, vals, labels = sparse_case
    _, dt, extra = measure(vf.stats.auroc_sparse, idx, vals, labels, F)
    codes_mb = (idx.nbytes + vals.nbytes) / 2**20
    table = benchmark.pedantic(vf.stats.auroc_sparse, args=(idx, vals, labels, F), rounds=2)
    assert table.shape == (F, C)
    base = per_pair_baselines(idx, vals, labels)
    best = benchmark.stats.stats.min if benchmark.stats else dt
    benchmark.extra_info.update(
        {
            "N": N,
            "F": F,
            "C": C,
            "k": K,
            "peak_beyond_inputs_mib": round(extra, 1),
            "codes_mib": round(codes_mb, 1),
            "peak_over_codes": round(extra / codes_mb, 2),
            "load": os.getloadavg()[0],
            **{f"{k}_s_per_pair": v for k, v in base.items()},
            **{f"{k}_extrapolated_s": v * F * C for k, v in base.items()},
            **{f"speedup_vs_{k}": v * F * C / best for k, v in base.items()},
        }
    )


def test_sparse_full_stats_with_se(benchmark: Any, sparse_case: Any) -> None:
    idx, vals, labels = sparse_case
    _, _, extra = measure(vf.stats.score_sparse, idx, vals, labels, F, top_n=16)
    benchmark.pedantic(
        vf.stats.score_sparse, args=(idx, vals, labels, F), kwargs={"top_n": 16}, rounds=1
    )
    benchmark.extra_info["peak_beyond_inputs_mib"] = round(extra, 1)


def test_dense_auroc(benchmark: Any) -> None:
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((DENSE_N, DENSE_F), dtype=np.float32)
    labels = make_labels(DENSE_N, C)
    table = benchmark.pedantic(vf.stats.auroc, args=(scores, labels), rounds=1)
    assert table.shape == (DENSE_F, C)


def main() -> None:
    """Prints the figures for README's performance table."""
    print(f"load before: {os.getloadavg()}", flush=True)
    idx, vals = make_codes(N, F, K)
    labels = make_labels(N, C)
    codes_mb = (idx.nbytes + vals.nbytes) / 2**20
    rows = []
    for name, fn, kw in (
        ("auroc_sparse (AUROC table)", vf.stats.auroc_sparse, {}),
        ("score_sparse (+SE, stats, top-16)", vf.stats.score_sparse, {"top_n": 16}),
    ):
        best = (np.inf, 0.0, 0.0)
        for _ in range(2):
            c0 = time.process_time()
            _, dt, extra = measure(fn, idx, vals, labels, F, **kw)
            best = min(best, (dt, time.process_time() - c0, extra))
        rows.append((name, *best))
        print(
            f"{name}: wall {best[0]:.2f} s, cpu {best[1]:.2f} s, peak beyond inputs {best[2]:.0f} MiB "
            f"({best[2] / codes_mb:.2f}x codes of {codes_mb:.0f} MiB), load {os.getloadavg()[0]:.2f}",
            flush=True,
        )
    base = per_pair_baselines(idx, vals, labels)
    for k, v in base.items():
        full = v * F * C
        print(
            f"{k}: {v:.3f} s/pair -> {full / 86400:.1f} days for the table; "
            f"vlmfast is {full / rows[0][1]:.2e}x faster",
            flush=True,
        )
    del idx, vals, labels
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((DENSE_N, DENSE_F), dtype=np.float32)
    dl = make_labels(DENSE_N, C)
    c0 = time.process_time()
    _, dt, extra = measure(vf.stats.auroc, scores, dl)
    cpu = time.process_time() - c0
    print(
        f"dense auroc {DENSE_F} x {C} x {DENSE_N}: wall {dt:.2f} s, cpu {cpu:.2f} s, peak beyond inputs {extra:.0f} MiB, "
        f"load {os.getloadavg()[0]:.2f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
