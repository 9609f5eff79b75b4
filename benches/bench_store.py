"""Activation store throughput against its baselines, measured in one run (page cache warm).

Run: ``make bench`` or ``.venv/bin/python -m pytest benches/bench_store.py --benchmark-enable -s``.
Size: ``VLMFAST_BENCH_ROWS`` rows x 768 float16 (default 262,144 = 403 MB, sized for a
shared 2-core / 24 GB VM; the README figures use the issue's 2,097,152 rows = 3.2 GB:
``VLMFAST_BENCH_ROWS=2097152 ... --basetemp=/tmp/somewhere`` needs ~10 GB of disk and
~13 GB of free memory for the page cache to stay warm).
The last test prints the ratios that go into README's performance table.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from vlmfast.store import ActivationStore

ROWS = int(os.environ.get("VLMFAST_BENCH_ROWS", 262_144))
D = 768
CHUNK = 8192
BATCH = 4096
HOOK = "image.blocks.0.resid_post"
RESULTS: dict[str, float] = {}
LOAD: dict[str, float] = {}  # 1-minute load average when each figure was taken


ROUNDS = int(os.environ.get("VLMFAST_BENCH_ROUNDS", 3))


def _time(
    benchmark: Any,
    name: str,
    fn: Callable[[], Any],
    nbytes: float,
    setup: Callable[[], None] | None = None,
) -> None:
    """Best of ``ROUNDS`` runs (after a warm-up run), recorded as GB/s under ``name``.

    The best run, not the mean: the shared VM's other tenants only ever slow a run down.
    ``setup`` runs untimed before every run (the write benches delete the previous
    run's output there, so that every writer reuses just-freed page-cache memory:
    on this VM freed memory goes back to the host after a few seconds and costs a
    host page fault per page when touched again).
    """
    if setup is not None:
        setup()
    fn()  # warm the page cache / code paths
    times: list[float] = []

    def timed() -> None:
        if setup is not None:
            setup()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)

    benchmark.pedantic(timed, rounds=ROUNDS, iterations=1)
    RESULTS[name] = nbytes / min(times) / 1e9
    LOAD[name] = os.getloadavg()[0]


def _evict(path: Any) -> None:
    """Drops a file's clean pages from the page cache (after an fsync)."""
    if not path.is_file():
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("bench")
    x = torch.empty(ROWS, D, dtype=torch.float16)
    for start in range(0, ROWS, 262_144):  # in blocks: no float32 copy of it all
        stop = min(start + 262_144, ROWS)
        x[start:stop] = torch.randn(stop - start, D)
    raw = root / "raw.bin"
    x.numpy().tofile(raw)
    store = ActivationStore.create(root / "s.zarr", {HOOK: D}, dtype="float16", chunk_rows=CHUNK)
    store.append(HOOK, x)
    store.close()
    # Both sides start from the page cache as a reader finds it (pages read from
    # disk), not as the writer left it: the store writes chunks with direct I/O
    # (no cached pages), numpy's tofile buffered ones (which the kernel may keep
    # in 2 MiB folios: mapped, those read faster than 4 KiB pages).
    for path in [raw, *(root / "s.zarr").rglob("*")]:
        _evict(path)
    return {"root": root, "x": x, "raw": raw, "store": ActivationStore.open(root / "s.zarr")}


def _nbytes() -> float:
    return ROWS * D * 2.0


WRITE_ROUNDS = int(os.environ.get("VLMFAST_BENCH_WRITE_ROUNDS", 5))
COMMIT_EVERY = {"write_store": 32_768, "write_store_cadence": 262_144}
"""Rows per durable commit: every append (32,768 rows, 50 MB: the stress case), and
every 8 appends (400 MB; ``vlmfast cache`` commits every 10 s, i.e. at most this
often once it writes >= 40 MB/s)."""
RATIOS: dict[str, list[float]] = {}


def test_write_durable_vs_dd(benchmark: Any, data: dict[str, Any]) -> None:
    """dd and the store's writes interleaved round by round (dd, store, store at the
    cache's cadence, repeated): this VM's write speed drifts 2-5x within minutes, so
    each round's ratio compares runs seconds apart. Best of the rounds goes into
    RESULTS; every round's ratio into RATIOS (the report prints their median)."""
    x, raw, root = data["x"], data["raw"], data["root"]
    out, dd_out = root / "w.zarr", root / "dd.bin"

    def dd() -> None:
        subprocess.run(
            ["dd", f"if={raw}", f"of={dd_out}", "bs=4M", "conv=fsync", "status=none"], check=True
        )

    def store(every: int) -> None:
        s = ActivationStore.create(out, {HOOK: D}, dtype="float16", chunk_rows=CHUNK)
        for start in range(0, ROWS, 32_768):  # appends of 32,768 rows
            stop = min(start + 32_768, ROWS)
            s.append(HOOK, x[start:stop], commit=stop % every == 0 or stop == ROWS)
        s.close()

    def clean() -> None:
        shutil.rmtree(out, ignore_errors=True)
        dd_out.unlink(missing_ok=True)

    def timed(fn: Callable[[], Any]) -> float:
        clean()  # reuse just-freed page-cache memory (see _time)
        t0 = time.perf_counter()
        fn()
        return _nbytes() / (time.perf_counter() - t0) / 1e9

    def rounds() -> None:
        timed(dd)  # warm-up
        timed(lambda: store(COMMIT_EVERY["write_store"]))
        for _ in range(WRITE_ROUNDS):
            speeds = {"write_dd": timed(dd)}
            for name, every in COMMIT_EVERY.items():
                speeds[name] = timed(lambda every=every: store(every))
            for name, v in speeds.items():
                RESULTS[name] = max(RESULTS.get(name, 0.0), v)
                LOAD[name] = os.getloadavg()[0]
                if name != "write_dd":
                    RATIOS.setdefault(name, []).append(v / speeds["write_dd"])
        clean()

    benchmark.pedantic(rounds, rounds=1, iterations=1)


def test_read_sequential_store(benchmark: Any, data: dict[str, Any]) -> None:
    store = data["store"]
    _time(benchmark, "read_store", lambda: store.read(HOOK), _nbytes())


def test_read_sequential_memmap(benchmark: Any, data: dict[str, Any]) -> None:
    raw = data["raw"]

    def read() -> np.ndarray:
        return np.array(np.memmap(raw, dtype=np.float16, mode="r", shape=(ROWS, D)))

    _time(benchmark, "read_memmap", read, _nbytes())


def test_shuffled_stream(benchmark: Any, data: dict[str, Any]) -> None:
    store = data["store"]

    def stream() -> int:
        return sum(len(b) for b in store.batches(HOOK, BATCH, shuffle=True, seed=0))

    _time(benchmark, "stream_store", stream, _nbytes())


def _zarr_array(data: dict[str, Any]) -> Any:
    import zarr

    return zarr.open_group(data["root"] / "s.zarr", mode="r")[f"acts/{HOOK}"]


def test_shuffled_stream_zarr_python(benchmark: Any, data: dict[str, Any]) -> None:
    """The same work in zarr-python + numpy: permuted chunks, window shuffle, batches."""
    arr = _zarr_array(data)
    n_chunks = -(-ROWS // CHUNK)
    window = 8

    def stream() -> int:
        rng = np.random.default_rng(0)
        order = rng.permutation(n_chunks)
        total = 0
        for w in range(0, n_chunks, window):
            parts = [arr[c * CHUNK : min((c + 1) * CHUNK, ROWS)] for c in order[w : w + window]]
            buf = np.concatenate(parts)
            buf = buf[rng.permutation(len(buf))]
            for b in range(0, len(buf), BATCH):
                total += len(torch.from_numpy(buf[b : b + BATCH]))
        return total

    _time(benchmark, "stream_zarr_python", stream, _nbytes())


def test_random_rows_zarr_python(benchmark: Any, data: dict[str, Any]) -> None:
    """zarr-python reading random rows (oindex), a few batches; rate scaled to bytes."""
    arr = _zarr_array(data)
    rng = np.random.default_rng(0)
    n_batches = 4
    idx = [np.sort(rng.choice(ROWS, BATCH, replace=False)) for _ in range(n_batches)]

    def read() -> None:
        for i in idx:
            arr.oindex[i, :]

    _time(benchmark, "oindex_zarr_python", read, n_batches * BATCH * D * 2.0)


def test_report() -> None:
    r = RESULTS
    lines = [f"rows={ROWS} x {D} float16 ({_nbytes() / 1e6:.0f} MB), chunk {CHUNK}, batch {BATCH}"]
    lines += [f"  {k}: {v:.3f} GB/s (load {LOAD.get(k, float('nan')):.2f})" for k, v in r.items()]

    def ratio(a: str, b: str) -> str:
        return f"{r[a] / r[b]:.2f}x" if a in r and b in r else "n/a"

    lines += [
        f"sequential read vs numpy memmap: {ratio('read_store', 'read_memmap')} (target >= 0.8x)",
        f"shuffled stream vs sequential read: {ratio('stream_store', 'read_store')} (>= 0.6x)",
        f"shuffled stream vs zarr-python same work: {ratio('stream_store', 'stream_zarr_python')} (>= 1.5x)",
        f"shuffled stream vs zarr-python oindex: {ratio('stream_store', 'oindex_zarr_python')} (>= 10x)",
        f"durable write vs dd conv=fsync, best vs best: {ratio('write_store', 'write_dd')}"
        f" (>= 0.8x); at the cache's cadence: {ratio('write_store_cadence', 'write_dd')}",
    ]
    for name, values in RATIOS.items():
        lines.append(
            f"{name} / dd per round: median {float(np.median(values)):.2f}x, "
            f"range {min(values):.2f}-{max(values):.2f}x over {len(values)} rounds"
        )
    print("\n" + "\n".join(lines))
