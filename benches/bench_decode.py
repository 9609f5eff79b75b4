"""Reading a folder of JPEGs: images decoded on a thread pool vs in the reading thread.

Run: ``.venv/bin/python -m pytest benches/bench_decode.py --benchmark-enable -s`` (or
``make bench``). Data: ``VLMFAST_BENCH_DECODE_IMAGES`` (default 256) COCO-sized 640 x 480
JPEGs (quality 90, smooth gradients + shapes + noise, ~60 KB each) with captions in a
JSONL file, read with ``vf.data.open_source``. Two figures, each the best of
``VLMFAST_BENCH_ROUNDS`` alternating rounds, against ``decode_workers=0`` (the decode
in the reading thread, as every source did before the pool) in the same run:

- the source alone: records/s of iterating it (decode, convert to RGB);
- ``vlmfast cache``'s pipeline without the store (``iter_forward``: read, decode,
  preprocess, tokenize, forward of the tiny CLIP's both towers, cut rows), 1 torch
  thread, so that the difference is what decoding ahead buys a forward.
The records are checked identical on both sides.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

IMAGES = int(os.environ.get("VLMFAST_BENCH_DECODE_IMAGES", 256))
ROUNDS = int(os.environ.get("VLMFAST_BENCH_ROUNDS", 3))
RESULTS: dict[str, float] = {}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("jpegs")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:480, 0:640]
    lines = []
    for i in range(IMAGES):
        base = np.stack([(xx * (i % 5 + 1)) % 256, (yy * 2) % 256, (xx + yy + 9 * i) % 256], -1)
        noise = rng.normal(0, 6, base.shape)
        img = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(img)
        for _ in range(4):
            x, y = rng.integers(0, 560), rng.integers(0, 400)
            draw.ellipse(
                [x, y, x + 80, y + 80], fill=tuple(int(c) for c in rng.integers(0, 255, 3))
            )
        img.save(root / f"{i}.jpg", quality=90)
        lines.append(json.dumps({"image": f"{i}.jpg", "caption": f"a red cat number {i}"}))
    (root / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return root


def _best(fns: dict[str, Callable[[], Any]]) -> dict[str, float]:
    for fn in fns.values():
        fn()  # warm the page cache and code paths
    best = {k: float("inf") for k in fns}
    for _ in range(ROUNDS):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best


def test_source_decode_pool(benchmark: Any, folder: Path) -> None:
    from vlmfast.data import open_source
    from vlmfast.data.sources.pending import default_decode_workers

    def read(workers: int) -> list[bytes]:
        return [
            r.image.tobytes()[:64] for r in open_source(folder, decode_workers=workers) if r.image
        ]

    assert read(0) == read(default_decode_workers())
    best = benchmark.pedantic(
        lambda: _best({"serial": lambda: read(0), "pool": lambda: read(default_decode_workers())}),
        rounds=1,
        iterations=1,
    )
    RESULTS["source_serial"] = IMAGES / best["serial"]
    RESULTS["source_pool"] = IMAGES / best["pool"]


def test_forward_pipeline_decode_pool(benchmark: Any, folder: Path, tmp_path: Path) -> None:
    from vlmfast.caching import CacheConfig, iter_forward, setup_cache
    from vlmfast.data.synthetic.model import build_clip, tiny_config
    from vlmfast.data.synthetic.train import save_model

    torch.manual_seed(0)
    cfg = tiny_config()
    save_model(tmp_path / "m", cfg, build_clip(cfg).state_dict(), {})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)

    def run(workers: int) -> int:
        c = CacheConfig(
            model=f"synthetic:{tmp_path / 'm'}",
            data=str(folder),
            hooks=["image.blocks.*.resid_post", "joint.embed"],
            out=tmp_path / "unused.zarr",
            positions="cls",
            batch_size=32,
            decode_workers=workers,
            progress=False,
        )
        setup = setup_cache(c)
        return sum(len(batch) for _, batch, _, _ in iter_forward(setup, c))

    try:
        from vlmfast.data.sources.pending import default_decode_workers

        best = benchmark.pedantic(
            lambda: _best(
                {"serial": lambda: run(0), "pool": lambda: run(default_decode_workers())}
            ),
            rounds=1,
            iterations=1,
        )
    finally:
        torch.set_num_threads(threads)
    RESULTS["forward_serial"] = IMAGES / best["serial"]
    RESULTS["forward_pool"] = IMAGES / best["pool"]


def test_report() -> None:
    from vlmfast.data.sources.pending import default_decode_workers

    if not RESULTS:
        pytest.skip("run with --benchmark-enable")
    print(
        f"\n{IMAGES} JPEGs 640x480, {default_decode_workers()} decode threads, load {os.getloadavg()[0]:.2f}"
    )
    for name in ("source", "forward"):
        if f"{name}_serial" in RESULTS:
            a, b = RESULTS[f"{name}_serial"], RESULTS[f"{name}_pool"]
            print(f"  {name}: {a:.0f} -> {b:.0f} records/s ({b / a:.2f}x)")
