"""Causal tracing of the ViT-B/32 image tower: batched prefix reuse vs ROME's serial loop.

Model: ``open_clip:ViT-B-32`` with random weights (offline). Image tower corrupted with
3-sigma embedding noise on every patch, ``resid`` restored at each (layer, position).

- serial (ROME's ``trace_with_patch`` loop): per example and (layer, position), one full
  image-tower forward of ``1 + samples`` rows, row 0 clean, restoration copied from row 0
  -- ``trace(method="serial")``;
- serial over the whole batch (a stronger loop: one ``samples x pairs``-row forward per
  (layer, position)) -- default case only;
- batched: the corrupted forward once, then per layer every position's restoration
  stacked on the batch and continued from ``blocks.{L+1}`` with ``run_from``.

Default (collected) case, small: 1 pair, 2 samples, layers 0/6/11 x 50 positions.
``VLMFAST_BENCH_TRACE_FULL=1``: the issue's size, 4 pairs, 10 samples, 12 layers x 50
positions (a long run on a 2-core CPU). ``VLMFAST_BENCH_TRACE_PAIRS`` / ``_SAMPLES`` /
``_LAYERS`` (comma-separated) override the sizes. Results must agree within 1e-5.

``VLMFAST_BENCH_TRACE_SERIAL_SAMPLE=N`` (with the full size): the batched trace runs over
all 12 x 50 cells, ROME's loop over N cells drawn at random (seeded) and is extrapolated
linearly to all cells. That extrapolation is exact up to timing noise: every serial
restoration is the same full forward of ``1 + samples`` rows per example, whatever its
layer and position. The sampled cells are also checked against the batched table.
"""

from __future__ import annotations

import os
import time
from typing import Any

import pytest
import torch

import vlmfast as vf
from vlmfast.causal.tracing import prepare_trace, trace

FULL = os.environ.get("VLMFAST_BENCH_TRACE_FULL", "0") == "1"
N_PAIRS = int(os.environ.get("VLMFAST_BENCH_TRACE_PAIRS", 4 if FULL else 1))
SAMPLES = int(os.environ.get("VLMFAST_BENCH_TRACE_SAMPLES", 10 if FULL else 2))
LAYERS = list(range(12)) if FULL else [0, 6, 11]
if os.environ.get("VLMFAST_BENCH_TRACE_LAYERS"):
    LAYERS = [int(x) for x in os.environ["VLMFAST_BENCH_TRACE_LAYERS"].split(",")]
SERIAL_SAMPLE = int(os.environ.get("VLMFAST_BENCH_TRACE_SERIAL_SAMPLE", 0))
CAPTIONS = ["a red cube left of a blue sphere", "a green cone", "two purple cylinders", "a ball"]


@pytest.fixture(scope="module")
def setup() -> tuple[Any, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    pair = vf.load_pair("open_clip:ViT-B-32")
    px = torch.randn(N_PAIRS, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    return pair, px, pair.tokenize(CAPTIONS[:N_PAIRS])


def _kw() -> dict[str, Any]:
    return dict(noise="3x", samples=SAMPLES, seed=0, kinds=("resid",), layers=LAYERS)


def _serial_whole_batch(pair: Any, px: torch.Tensor, tok: torch.Tensor) -> torch.Tensor:
    """One ``S x B``-row full image-tower forward per (layer, position)."""
    prep = prepare_trace(pair, px, tok, "image", **_kw())
    setup = prep.setup
    out = torch.empty(len(LAYERS), len(prep.traced))
    rows = px.repeat(SAMPLES, 1, 1, 1)
    with torch.no_grad():
        clean = pair.image.run(px, cache=[f"image.blocks.{L}.resid_post" for L in LAYERS]).cache
        for i, layer in enumerate(LAYERS):
            hook = f"image.blocks.{layer}.resid_post"
            src = clean[hook].repeat(SAMPLES, 1, 1)
            for j, pos in enumerate(prep.traced):
                ivs = [setup.corruption("batched"), vf.Patch(hook, source=src, positions=[pos])]
                emb = pair.image.run(rows, interventions=ivs).embed
                out[i, j] = setup.score(emb.view(SAMPLES, N_PAIRS, -1)).mean()
    return out


def _report(benchmark: Any, label: str, t_serial: float, diff: float) -> None:
    t_batched = benchmark.stats.stats.min
    benchmark.extra_info.update(
        baseline=label, serial_s=t_serial, batched_s=t_batched, speedup=t_serial / t_batched,
        max_abs_diff=diff, threads=torch.get_num_threads(), full=FULL,
    )  # fmt: skip
    print(
        f"\ntrace resid {len(LAYERS)} layers x 50 positions, ViT-B/32, {N_PAIRS} pairs x "
        f"{SAMPLES} samples: {label} {t_serial:.1f} s, batched {t_batched:.1f} s -> "
        f"{t_serial / t_batched:.2f}x; max |diff| {diff:.2e}"
    )


@pytest.mark.skipif(SERIAL_SAMPLE == 0, reason="set VLMFAST_BENCH_TRACE_SERIAL_SAMPLE=N")
def test_vs_rome_serial_loop_sampled(benchmark: Any, setup: Any) -> None:
    """Half the sampled serial cells are timed before the batched run, half after, so a
    change of machine load during the long run shows up as a before/after difference."""
    pair, px, tok = setup
    prep = prepare_trace(pair, px, tok, "image", **_kw())
    cells = [(i, j) for i in range(len(LAYERS)) for j in range(len(prep.traced))]
    gen = torch.Generator().manual_seed(1)
    picked = [cells[int(c)] for c in torch.randperm(len(cells), generator=gen)[:SERIAL_SAMPLE]]
    half = len(picked) // 2

    def serial(part: list[tuple[int, int]]) -> tuple[float, list[float]]:
        t0 = time.perf_counter()
        vals = [
            float(prep.setup.restore("resid", LAYERS[i], [(prep.traced[j],)], "serial")[0])
            for i, j in part
        ]
        return time.perf_counter() - t0, vals

    t_before, got = serial(picked[:half])
    fast = benchmark.pedantic(lambda: trace(pair, px, tok, **_kw()), rounds=1, iterations=1)
    t_after, rest = serial(picked[half:])
    got += rest
    diff = max(abs(g - float(fast.effect["resid"][i, j])) for g, (i, j) in zip(got, picked))
    assert diff <= 1e-5
    t_serial = (t_before + t_after) * len(cells) / len(picked)
    per_before = t_before / max(half, 1)
    per_after = t_after / max(len(picked) - half, 1)
    benchmark.extra_info.update(
        serial_cells_timed=len(picked), serial_s_per_cell_before=per_before,
        serial_s_per_cell_after=per_after,
    )  # fmt: skip
    print(f"\nserial s/cell before {per_before:.2f}, after {per_after:.2f}")
    _report(
        benchmark, f"ROME serial loop ({len(picked)} cells timed, extrapolated)", t_serial, diff
    )


@pytest.mark.skipif(SERIAL_SAMPLE == 0, reason="set VLMFAST_BENCH_TRACE_SERIAL_SAMPLE=N")
def test_serial_loop_with_the_pooled_row_shortcut(benchmark: Any, setup: Any) -> None:
    """The serial reference runs every row of the last block (``all_rows=True``); a loop
    written on ``tower.run`` gets the pooled-row shortcut whenever its hook is below the
    last block. Times the same seeded cells both ways, interleaved, to state that rate."""
    pair, px, tok = setup
    prep = prepare_trace(pair, px, tok, "image", **_kw())
    cells = [(i, j) for i in range(len(LAYERS)) for j in range(len(prep.traced))]
    gen = torch.Generator().manual_seed(1)
    picked = [cells[int(c)] for c in torch.randperm(len(cells), generator=gen)[:SERIAL_SAMPLE]]
    spent = {True: 0.0, False: 0.0}
    vals: dict[bool, list[float]] = {True: [], False: []}
    for i, j in picked:
        for all_rows in (True, False):
            t0 = time.perf_counter()
            got = prep.setup.restore_serial(
                "resid", LAYERS[i], [(prep.traced[j],)], all_rows=all_rows
            )
            spent[all_rows] += time.perf_counter() - t0
            vals[all_rows].append(float(got[0]))
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    diff = max(abs(a - b) for a, b in zip(vals[True], vals[False]))
    assert diff <= 1e-5
    full, short = spent[True] / len(picked), spent[False] / len(picked)
    benchmark.extra_info.update(serial_s_per_cell_all_rows=full, serial_s_per_cell_shortcut=short)
    print(
        f"\nserial s/cell: every row {full:.2f}, pooled-row shortcut {short:.2f} ({full / short:.3f}x)"
    )


@pytest.mark.skipif(SERIAL_SAMPLE > 0, reason="sampled serial mode runs instead")
def test_vs_rome_serial_loop(benchmark: Any, setup: Any) -> None:
    pair, px, tok = setup
    t0 = time.perf_counter()
    serial = trace(pair, px, tok, method="serial", **_kw())
    t_serial = time.perf_counter() - t0
    fast = benchmark.pedantic(lambda: trace(pair, px, tok, **_kw()), rounds=1, iterations=1)
    diff = float((fast.effect["resid"] - serial.effect["resid"]).abs().max())
    assert fast.effect["resid"].shape == (len(LAYERS), 50)
    assert diff <= 1e-5
    _report(benchmark, "ROME serial loop", t_serial, diff)


@pytest.mark.skipif(FULL, reason="default-size case only (the full size is long)")
def test_vs_serial_whole_batch(benchmark: Any, setup: Any) -> None:
    pair, px, tok = setup
    t0 = time.perf_counter()
    serial = _serial_whole_batch(pair, px, tok)
    t_serial = time.perf_counter() - t0
    fast = benchmark.pedantic(lambda: trace(pair, px, tok, **_kw()), rounds=1, iterations=1)
    diff = float((fast.effect["resid"] - serial).abs().max())
    assert diff <= 1e-5
    _report(benchmark, "serial whole-batch loop", t_serial, diff)
