"""``eval-sae``'s reconstruction suite on many rows: time, and where it goes.

    python benches/bench_eval_sae.py                       # 1M x 768, 16,384 latents, k=32
    python benches/bench_eval_sae.py --rows 65536          # a measured slice
    python benches/bench_eval_sae.py --store               # read through an activation store

Rows are synthetic (a pool of 65,536 Gaussian rows with a mean offset, cycled; the
compute per row does not depend on the values) and labelled cls / patch as an image
hook's are (1 CLS row per 17), so the per-token-type split is timed too. The SAE is a
random :class:`~vlmfast.sae.TopKSAE`. Reported: total seconds, rows/s, and the split
between the SAE's encode + decode (dense ``[rows, d] x [d, n_latents]`` GEMM: ``2 * rows *
d * n_latents`` FLOP, whatever computes the metrics) and the metrics themselves. With
``--store`` the rows go through a temporary store (written first, not timed) and
:func:`vlmfast.sae.evaluate_suite`, as ``vlmfast eval-sae`` reads them.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from vlmfast.sae import SuiteConfig, TopKSAE, evaluate_suite
from vlmfast.sae.evaluation import evaluate_batches

POOL = 65_536


def _pool(d: int, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    g = torch.Generator().manual_seed(seed)
    rows = torch.randn(POOL, d, generator=g) + 2.0 * torch.randn(d, generator=g)
    labels = np.where(np.arange(POOL) % 17 == 0, "cls", "patch")
    return rows, labels


def _batches(
    rows: torch.Tensor, labels: np.ndarray, n: int, batch: int
) -> Iterator[tuple[torch.Tensor, np.ndarray]]:
    done = 0
    while done < n:
        start = done % POOL
        take = min(batch, n - done, POOL - start)
        yield rows[start : start + take], labels[start : start + take]
        done += take


class _Codes:
    """The SAE's own codes for the pool, looked up: times the metrics alone."""

    def __init__(self, sae: TopKSAE, rows: torch.Tensor, batch: int) -> None:
        self.d_in, self.n_latents, self.sae = sae.d_in, sae.n_latents, sae
        parts = [sae.encode(rows[i : i + batch]) for i in range(0, rows.shape[0], batch)]
        self.values = torch.cat([p[0] for p in parts])
        self.indices = torch.cat([p[1] for p in parts])
        self.recon = sae.decode(self.values[:batch], self.indices[:batch])

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = x.shape[0]
        return self.values[:n], self.indices[:n]

    def decode(self, values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        return self.recon[: values.shape[0]]


def _store_run(sae: TopKSAE, rows: torch.Tensor, n: int, batch: int) -> float:
    from vlmfast.store import ActivationStore

    hook = "image.blocks.0.resid_post"
    with tempfile.TemporaryDirectory() as tmp:
        store = ActivationStore.create(
            Path(tmp) / "s.zarr", {hook: rows.shape[1]}, chunk_rows=8192, positions="all",
            towers={"image": {"cls_token": True, "image_size": 64, "patch_size": 16}},
        )  # fmt: skip
        done = 0
        while done < n:
            take = min(POOL, n - done)
            idx = np.arange(done, done + take)
            store.append(
                hook, rows[:take].numpy(), index={"sample": idx // 17, "position": idx % 17}
            )
            done += take
        sae.cfg.hook = hook
        t0 = time.perf_counter()
        report = evaluate_suite(sae, store=store, config=SuiteConfig(rows="all", batch_size=batch))
        seconds = time.perf_counter() - t0
        assert report.reconstruction is not None and report.reconstruction.overall.n_rows == n
        return seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--d", type=int, default=768)
    p.add_argument("--latents", type=int, default=16_384)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch", type=int, default=8192)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--store", action="store_true", help="read the rows through a store")
    p.add_argument(
        "--full-rows",
        type=int,
        default=None,
        help="run the full suite (encode included) on this many rows and scale to --rows "
        "(default: all --rows; the encoder GEMM is linear in the rows)",
    )
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    rows, labels = _pool(a.d)
    sae = TopKSAE(a.d, a.latents, a.k)
    print(
        f"{platform.processor() or platform.machine()}, {a.threads} threads, torch "
        f"{torch.__version__}; {a.rows:,} rows x {a.d}, {a.latents:,} latents, k={a.k}"
    )
    metrics_only = _Codes(sae, rows[: a.batch], a.batch)
    t0, c0 = time.perf_counter(), time.process_time()
    evaluate_batches(metrics_only, _batches(rows, labels, a.rows, a.batch))
    t_metrics, c_metrics = time.perf_counter() - t0, time.process_time() - c0
    print(
        f"metrics alone (codes looked up):  {t_metrics:8.1f} s wall, {c_metrics:8.1f} CPU-s  "
        f"{a.rows / t_metrics:12,.0f} rows/s"
    )
    n_full = min(a.rows, a.full_rows or a.rows)
    t0, c0 = time.perf_counter(), time.process_time()
    if a.store:
        t_full = _store_run(sae, rows, n_full, a.batch)
    else:
        evaluate_batches(sae, _batches(rows, labels, n_full, a.batch))
        t_full = time.perf_counter() - t0
    c_full = time.process_time() - c0
    gflop = 2 * n_full * a.d * a.latents / 1e9
    print(
        f"full suite ({'store' if a.store else 'in memory'}, {n_full:,} rows):  {t_full:8.1f} s"
        f" wall, {c_full:8.1f} CPU-s  {n_full / t_full:12,.0f} rows/s; encoder GEMM "
        f"{gflop:,.0f} GFLOP ({gflop / t_full:.1f} GFLOP/s over the whole run)"
    )
    if n_full < a.rows:
        scale = a.rows / n_full
        print(
            f"full suite scaled to {a.rows:,} rows (linear): {t_full * scale:8.1f} s wall, "
            f"{c_full * scale:8.1f} CPU-s"
        )
    if hasattr(os, "getloadavg"):
        print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
