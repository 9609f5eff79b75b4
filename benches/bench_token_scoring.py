"""Token-aggregated scoring of top-k codes (``score_sparse_token_chunks``).

Target (issue): 1M samples x 50 token rows x k=32 over F=65,536 features x C=200
concepts, streamed from chunks: <= 120 s and <= 8 GiB peak on the 2-core machine.

Chunks are generated deterministically inside the ``chunks`` callable from the
token row numbers (the generation time is part of the wall time and is reported
separately). Chunks hold a fixed number of token rows (not a multiple of 50), so
samples span chunk boundaries. Two generators:

* ``pool`` (realistic): sample ``s`` draws its codes from a pool of P=128 features
  ``(base_s + j * step_s) mod F`` (odd step: distinct); token row ``t`` lists the k
  consecutive pool slots from a per-row offset, so neighbouring tokens share
  features and a sample has at most 128 distinct features (about 128 here).
* ``uniform`` (worst case): every token row lists k features spread over all of F,
  so a sample has ~1,580 distinct features (1.6e9 sample-level nonzeros at 1M).

Values are quantised (``(h mod 1024 + 1) / 256``): many ties. Peak memory is the
child process's ``ru_maxrss``; every figure comes from a fresh subprocess.

    python benches/bench_token_scoring.py                 # the README figures
    python benches/bench_token_scoring.py --one pool 1000000

The pytest cases (``make bench``) are small and check the result against numpy
aggregation + the existing triplet scorer.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

import vlmfast as vf

F, K, C, T = 65_536, 32, 200, 50
POOL = 128
CHUNK_ROWS = 20_000  # token rows per chunk (not a multiple of T: samples span chunks)


class Gen:
    """Deterministic token chunks for ``n`` samples; ``seconds`` accumulates generation time."""

    def __init__(self, n: int, kind: str, chunk_rows: int = CHUNK_ROWS) -> None:
        self.n, self.kind, self.chunk_rows = n, kind, chunk_rows
        self.seconds = 0.0
        self.k_off = np.arange(K, dtype=np.uint32)[None, :]

    def chunk(self, r0: int, r1: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rows = np.arange(r0, r1, dtype=np.uint32)[:, None]
        s = rows // np.uint32(T)
        h = rows * np.uint32(0x9E3779B1)
        if self.kind == "pool":
            base = s * np.uint32(2654435761)
            step = ((s * np.uint32(40503)) & np.uint32(0x7FFF)) * np.uint32(2) + np.uint32(1)
            pos = ((h >> np.uint32(9)) + self.k_off) & np.uint32(POOL - 1)
            idx = (base + pos * step) & np.uint32(F - 1)
        else:  # uniform: k features of a random stride walk over all of F
            step = ((h >> np.uint32(3)) & np.uint32(F // K - 1)) | np.uint32(1)
            idx = (h + self.k_off * step) & np.uint32(F - 1)
        v = ((h ^ (self.k_off * np.uint32(0x85EBCA6B))) >> np.uint32(13)) & np.uint32(1023)
        vals = (v + np.uint32(1)).astype(np.float32) * np.float32(1 / 256)
        return s[:, 0].astype(np.int64), idx, vals

    def __call__(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        total = self.n * T
        for r0 in range(0, total, self.chunk_rows):
            t0 = time.perf_counter()
            out = self.chunk(r0, min(total, r0 + self.chunk_rows))
            self.seconds += time.perf_counter() - t0
            yield out


def make_labels(n: int, n_concepts: int = C, per_row: int = 3, seed: int = 1) -> np.ndarray:
    """``[n, n_concepts]`` bool, ``per_row`` positives per sample, Zipf-like frequencies."""
    rng = np.random.default_rng(seed)
    w = 1.0 / np.arange(1, n_concepts + 1) ** 0.8
    w /= w.sum()
    labels = np.zeros((n, n_concepts), dtype=bool)
    for lo in range(0, n, 65536):
        hi = min(n, lo + 65536)
        cols = rng.choice(n_concepts, size=(hi - lo, per_row), p=w)
        np.put_along_axis(labels[lo:hi], cols, np.True_, axis=1)
    return labels


def numpy_baseline(gen: Gen, labels: np.ndarray, mode: str = "max") -> tuple[dict[str, Any], float]:
    """Numpy aggregation (sort (sample, feature) keys per chunk, reduceat), then the existing
    exact triplet scorer (the one behind ``score_sparse_chunks``). Returns (tables, agg seconds)."""
    from vlmfast import _native

    t0 = time.perf_counter()
    rows_l, feat_l, val_l = [], [], []
    carry: tuple[np.ndarray, ...] | None = None
    for ids, idx, vals in gen():
        if carry is not None:
            ids, idx, vals = (np.concatenate([a, b]) for a, b in zip(carry, (ids, idx, vals)))
        last = ids[-1]
        cut = int(np.searchsorted(ids, last))  # ids are sorted here: keep the open sample
        carry = (ids[cut:], idx[cut:], vals[cut:])
        ids, idx, vals = ids[:cut], idx[:cut], vals[:cut]
        if len(ids):
            r, f, v = _numpy_agg(ids, idx, vals, mode)
            rows_l.append(r)
            feat_l.append(f)
            val_l.append(v)
    if carry is not None and len(carry[0]):
        r, f, v = _numpy_agg(*carry, mode)
        rows_l.append(r)
        feat_l.append(f)
        val_l.append(v)
    rows, feats, vals = np.concatenate(rows_l), np.concatenate(feat_l), np.concatenate(val_l)
    agg_s = time.perf_counter() - t0
    d = _native.score_sparse_triplets(
        rows, feats, vals, labels, F, stats=True, with_se=True, top_n=16
    )
    return d, agg_s


def _numpy_agg(
    ids: np.ndarray, idx: np.ndarray, vals: np.ndarray, mode: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    k = idx.shape[1]
    key = ids.repeat(k) * F + idx.ravel().astype(np.int64)
    order = np.argsort(key, kind="stable")
    key, v = key[order], vals.ravel()[order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    if mode == "max":
        agg = np.maximum.reduceat(v, starts)  # codes >= 0: absent rows (0) never win
    else:
        agg = (np.add.reduceat(v.astype(np.float64), starts) / T).astype(np.float32)
    keep = agg != 0
    uk = key[starts][keep]
    return uk // F, uk % F, agg[keep]


def run_one(kind: str, n: int, what: str = "vlmfast") -> dict[str, Any]:
    """One measurement (meant for a fresh process): wall, generation, peak RSS."""
    labels = make_labels(n)
    gen = Gen(n, kind)
    passes = 0

    def chunks() -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        nonlocal passes
        passes += 1
        return gen()

    t0 = time.perf_counter()
    c0 = time.process_time()
    if what == "vlmfast":
        s = vf.stats.score_sparse_token_chunks(chunks, labels, F, mode="max", top_n=16)
        checksum = float(np.nansum(s.auroc))
        agg_s = None
    else:
        d, agg_s = numpy_baseline(gen, labels)
        passes = 1
        checksum = float(np.nansum(d["auroc"]))
    wall = time.perf_counter() - t0
    return {
        "kind": kind,
        "n": n,
        "what": what,
        "wall_s": round(wall, 2),
        "cpu_s": round(time.process_time() - c0, 2),
        "gen_s": round(gen.seconds, 2),
        "numpy_agg_s": None if agg_s is None else round(agg_s, 2),
        "passes": passes,
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "auroc_sum": checksum,
        "load": os.getloadavg()[0],
    }


def subprocess_run(kind: str, n: int, what: str = "vlmfast", timeout: int = 3600) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--one", kind, str(n), what],
        check=True,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- pytest (small)


def _small(kind: str) -> tuple[Gen, np.ndarray]:
    n = 1500
    return Gen(n, kind, chunk_rows=7777), make_labels(n)


def _bench(benchmark: Any, kind: str) -> None:
    gen, labels = _small(kind)
    s = benchmark.pedantic(
        vf.stats.score_sparse_token_chunks, args=(gen, labels, F), kwargs={"top_n": 16}, rounds=1
    )
    d, _ = numpy_baseline(gen, labels)
    np.testing.assert_array_equal(s.auroc, d["auroc"])
    np.testing.assert_array_equal(s.se, d["se"])
    np.testing.assert_array_equal(s.top_rows, d["top_rows"])


def test_token_scoring_pool_small(benchmark: Any) -> None:
    _bench(benchmark, "pool")


def test_token_scoring_uniform_small(benchmark: Any) -> None:
    _bench(benchmark, "uniform")


def main(argv: list[str]) -> None:
    if argv[:1] == ["--one"]:
        print(json.dumps(run_one(argv[1], int(argv[2]), argv[3] if len(argv) > 3 else "vlmfast")))
        return
    n_big = int(os.environ.get("VLMFAST_BENCH_N", 1_000_000))
    n_cmp = int(os.environ.get("VLMFAST_BENCH_CMP_N", 100_000))
    n_worst = int(os.environ.get("VLMFAST_BENCH_WORST_N", n_big))
    print(f"load before: {os.getloadavg()}", flush=True)
    for kind, n, what in (
        ("pool", n_cmp, "numpy"),
        ("pool", n_cmp, "vlmfast"),
        ("pool", n_big, "vlmfast"),
        ("uniform", n_worst, "vlmfast"),
    ):
        print(json.dumps(subprocess_run(kind, n, what)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
