"""benches/bench_sae_peers.py: the summary, the table and the row cache (no peers needed)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location(
        "bench_sae_peers", ROOT / "benches/bench_sae_peers.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(name, tps, fvu):
    return {
        "contestant": name,
        "tokens_per_s": tps,
        "peak_rss_mib": 100.0,
        "fvu_held_out": fvu,
        "tokens": 10,
    }


def test_summary_takes_medians_and_the_ratio_to_the_fastest_peer():
    bench = _bench()
    runs = [
        _run("vlmfast", 300, 0.5),
        _run("sparsify", 100, 0.6),
        _run("vlmfast", 200, 0.5),
        _run("saelens", 50, 0.7),
        _run("sparsify", 150, 0.6),
        _run("vlmfast", 250, 0.5),
    ]
    summary = bench.summarise(runs)
    assert summary["vlmfast"]["tokens_per_s"] == 250
    assert summary["sparsify"]["tokens_per_s"] == 125
    assert summary["vlmfast"]["speedup_vs_fastest_peer"] == pytest.approx(2.0)
    spec = {
        "d": 8,
        "latents": 16,
        "k": 2,
        "batch": 4,
        "steps": 3,
        "lr": 1e-3,
        "threads": 1,
        "repeats": 3,
    }
    table = bench.markdown(summary, spec)
    assert "| vlmfast | 250 |" in table and "2.00x" in table


def test_no_peer_means_no_ratio_and_unknown_contestants_are_refused():
    bench = _bench()
    assert "speedup_vs_fastest_peer" not in bench.summarise([_run("vlmfast", 1, 0.1)])["vlmfast"]
    with pytest.raises(SystemExit, match="unknown contestant"):
        bench.main(["--quick", "--only", "vlmfast,nope"])


def test_rows_are_cached_once_and_read_back(tmp_path):
    bench = _bench()
    spec = {"d": 6, "n_features": 32, "batch": 4, "pool": 2, "held": 3, "seed": 0}
    path = bench.make_rows(spec, tmp_path)
    assert path.stat().st_size == (4 * 2 + 3) * 6 * 4
    assert bench.make_rows(spec, tmp_path) == path
    held = bench.read_rows(str(path), 6, 8, 3)
    assert held.shape == (3, 6)
