"""Hooked forward vs open_clip's forward, ViT-B/32 with random weights, same batch.

Three pytest-benchmark cases (open_clip, hooked with no hooks, hooked with a full
residual cache: every ``resid_pre``/``resid_mid``/``resid_post`` of both towers), then
``test_forward_ratios`` prints the two ratios from an interleaved timing loop (A, B, C,
A, B, C, ...; the minimum of each), which is robust to other jobs on a shared machine.

    make bench                                    # or:
    .venv/bin/python -m pytest benches/bench_forward.py --benchmark-enable -p no:randomly -s

Environment: VLMFAST_BENCH_THREADS (default 2), VLMFAST_BENCH_BATCH (default 8),
VLMFAST_BENCH_ROUNDS (default 7).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import pytest
import torch

THREADS = int(os.environ.get("VLMFAST_BENCH_THREADS", "2"))
BATCH = int(os.environ.get("VLMFAST_BENCH_BATCH", "8"))
ROUNDS = int(os.environ.get("VLMFAST_BENCH_ROUNDS", "7"))
RESID = ["*.resid_pre", "*.resid_mid", "*.resid_post"]


@pytest.fixture(scope="module")
def setup() -> dict[str, Any]:
    import open_clip

    from vlmfast.models import from_open_clip

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32").eval()
    pair = from_open_clip(model)
    px = torch.randn(BATCH, 3, 224, 224)
    tok = open_clip.tokenize([f"a photo of {i} red cubes left of a dog" for i in range(BATCH)])

    def original() -> Any:
        with torch.inference_mode():
            return model(px, tok)

    def hooked() -> Any:
        with torch.inference_mode():
            return pair.run(images=px, texts=tok)

    def hooked_cache() -> Any:
        with torch.inference_mode():
            return pair.run(images=px, texts=tok, cache=RESID)

    for fn in (original, hooked, hooked_cache):  # warm-up (allocator, kernels)
        fn()
    return {"original": original, "hooked": hooked, "hooked_cache": hooked_cache}


def test_open_clip_forward(benchmark: Any, setup: dict[str, Any]) -> None:
    benchmark.pedantic(setup["original"], rounds=3, warmup_rounds=0)


def test_hooked_forward_no_hooks(benchmark: Any, setup: dict[str, Any]) -> None:
    benchmark.pedantic(setup["hooked"], rounds=3, warmup_rounds=0)


def test_hooked_forward_full_resid_cache(benchmark: Any, setup: dict[str, Any]) -> None:
    out = setup["hooked_cache"]()
    assert len(out.cache) == 3 * (12 + 12)
    benchmark.pedantic(setup["hooked_cache"], rounds=3, warmup_rounds=0)


def interleaved(
    fns: dict[str, Callable[[], Any]], rounds: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Times the functions in turn, ``rounds`` times each: (wall, process CPU) seconds per call.

    Process CPU time counts only this process's threads, so it is less disturbed than
    wall time when other jobs share the cores.
    """
    wall: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return wall, cpu


def test_forward_ratios(setup: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    wall, cpu = interleaved(setup, ROUNDS)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [
        f"ViT-B/32 random weights, batch {BATCH} images + {BATCH} texts, {THREADS} threads, "
        f"{ROUNDS} interleaved rounds, load average {load:.2f}"
    ]
    labels = {
        "original": ("open_clip forward", None),
        "hooked": ("hooked, no hooks", 1.05),
        "hooked_cache": ("hooked, full resid cache", 1.25),
    }
    for key, (label, target) in labels.items():
        line = f"  {label:26s}"
        for what, times in (("wall", wall), ("cpu", cpu)):
            best, base = min(times[key]), min(times["original"])
            line += f" {what} min {best * 1e3:8.1f} ms (median {statistics.median(times[key]) * 1e3:8.1f})"
            if target is not None:
                line += f" ratio {best / base:.3f}x"
        if target is not None:
            line += f"  [target <= {target}x]"
        lines.append(line)
    with capsys.disabled():
        print("\n" + "\n".join(lines))
