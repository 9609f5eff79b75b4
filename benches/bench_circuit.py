"""Faithfulness curve of every head of both towers: batched engine vs one forward per size.

Run: ``.venv/bin/python -m pytest benches/bench_circuit.py -q --benchmark-enable -s
-p no:randomly``. Model ``VLMFAST_BENCH_CIRCUIT_MODEL`` (default ``open_clip:ViT-B-32``,
random weights, offline), ``VLMFAST_BENCH_CIRCUIT_PAIRS`` pairs (default 8: random images,
eight short captions), ``VLMFAST_BENCH_CIRCUIT_SIZES`` sizes on the log grid (default 32),
``VLMFAST_BENCH_THREADS`` torch threads (default 1), ``VLMFAST_BENCH_CIRCUIT_ROUNDS``
interleaved rounds (default 3; each method's best is kept). Also counts FLOPs
(``torch.utils.flop_counter``; deterministic: a machine-free ratio beside the wall one).
Mean ablation; the order is the AtP ranking of the 240 heads (computed once, not timed).

Measured in the same process:

- ``loop``: one full forward of the pair per circuit size on the captions as tokenised
  (77 tokens), ``vf.Ablate``-style per-row masks (``CircuitEvaluator(method="serial")``);
  what a user writes;
- ``loop_cut``: the same loop on the captions cut after the last EOT (what
  ``find_circuit`` does for causal EOT-pooled text towers; exact);
- ``batched``: ``CircuitEvaluator.evaluate`` (all sizes stacked, each tower once per
  distinct kept set, the layer trie sharing blocks below the first difference, ablated
  heads never computed, blocks after a size's last kept head at the pooled token only);
  also timed with ``sparse=False`` (hooked blocks, ``SetAblated`` masks: the heads
  computed and overwritten, every position).

The batched and loop metrics must agree within 1e-4 (float32, different batch shapes).
"""

from __future__ import annotations

import os
import time
from typing import Any

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import vlmfast as vf
from vlmfast.causal.circuits.engine import CircuitEvaluator
from vlmfast.causal.circuits.families import HeadFamily
from vlmfast.causal.circuits.inputs import circuit_inputs
from vlmfast.causal.circuits.null import keep_masks, log_grid
from vlmfast.causal.core.metrics import MatchedScore

MODEL = os.environ.get("VLMFAST_BENCH_CIRCUIT_MODEL", "open_clip:ViT-B-32")
PAIRS = int(os.environ.get("VLMFAST_BENCH_CIRCUIT_PAIRS", 8))
SIZES = int(os.environ.get("VLMFAST_BENCH_CIRCUIT_SIZES", 32))
THREADS = int(os.environ.get("VLMFAST_BENCH_THREADS", 1))
ROUNDS = int(os.environ.get("VLMFAST_BENCH_CIRCUIT_ROUNDS", 3))
CAPTIONS = [
    "a red cube left of a blue sphere",
    "a green cone",
    "two purple cylinders on a table",
    "a small yellow ball",
    "a photo of a dog",
    "a large gray metal cube",
    "three cyan spheres",
    "a brown rubber cylinder behind a red cone",
]


@pytest.fixture(scope="module")
def case() -> tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)  # the random weights: the AtP order, and so the trie sharing, follow them
    pair = vf.load_pair(MODEL).eval()
    s = pair.config.image.image_size
    gen = torch.Generator().manual_seed(0)
    px, px_c = torch.randn(2, PAIRS, 3, s, s, generator=gen)
    tok = pair.tokenize([CAPTIONS[i % len(CAPTIONS)] for i in range(PAIRS)])
    return pair, px, tok, px_c


def _evaluator(
    pair: Any, px: torch.Tensor, tok: torch.Tensor, sparse: bool = True
) -> CircuitEvaluator:
    fams = [
        HeadFamily(t, pair.config.tower(t).layers, pair.config.tower(t).heads)
        for t in ("image", "text")
    ]
    return CircuitEvaluator(
        pair, {"image": px, "text": tok}, fams, MatchedScore(), "logits", ablation="mean",
        sparse=sparse,
    )  # fmt: skip


def _interleaved(runs: dict[str, Any]) -> tuple[dict[str, float], dict[str, Any]]:
    """Best wall time of each method over ``ROUNDS`` rounds, the methods taking turns
    within a round (so drift of the machine's speed hits every method alike)."""
    times: dict[str, list[float]] = {k: [] for k in runs}
    out: dict[str, Any] = {}
    for _ in range(max(1, ROUNDS)):
        for name, run in runs.items():
            t0 = time.perf_counter()
            out[name] = run()
            times[name].append(time.perf_counter() - t0)
    return {k: min(v) for k, v in times.items()}, out


def _flops(run: Any) -> int:
    with FlopCounterMode(display=False) as counter:
        run()
    return int(counter.get_total_flops())


def test_circuit_curve_batched_vs_loop(benchmark: Any, case: Any) -> None:
    pair, px, tok, px_c = case
    clean, _, _ = circuit_inputs(pair, px, tok, px_c, None, None)
    tok_cut = clean["text"]
    att = vf.causal.attribute(pair, px, tok_cut, px_c, components=("heads",))
    ev_cut = _evaluator(pair, px, tok_cut)
    scores = torch.cat([att.ranking((t, "heads")).flatten() for t in ("image", "text")]).double()
    order = torch.argsort(-scores, stable=True)
    n = len(ev_cut.nodes)
    ks = log_grid(n, SIZES)
    keep = keep_masks(order, ks, n)

    ev_hooked = _evaluator(pair, px, tok_cut, sparse=False)
    ev_full = _evaluator(pair, px, tok)
    ev_cut.stats = dict.fromkeys(ev_cut.stats, 0)
    times, res = _interleaved(
        {
            "batched": lambda: ev_cut.evaluate(keep).metric,
            "hooked": lambda: ev_hooked.evaluate(keep).metric,
            "loop_cut": lambda: ev_cut.evaluate(keep, "serial").metric,
            "loop": lambda: ev_full.evaluate(keep, "serial").metric,
        }
    )
    st = ev_cut.stats
    work = {t: st[f"{t}_rows"] / st[f"{t}_loop_rows"] for t in ("image", "text")}
    pooled = {t: st[f"{t}_pooled_rows"] / st[f"{t}_rows"] for t in ("image", "text")}
    t_batched, t_hooked, t_loop_cut, t_loop = (
        times[k] for k in ("batched", "hooked", "loop_cut", "loop")
    )
    batched, hooked, loop_cut, loop = (res[k] for k in ("batched", "hooked", "loop_cut", "loop"))
    # FLOPs (deterministic): the batched call, and the loop from its first 4 sizes
    flops_batched = _flops(lambda: ev_cut.evaluate(keep))
    flops_loop = _flops(lambda: ev_full.evaluate(keep[:4], "serial")) * keep.shape[0] / 4
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)

    info = {
        "model": MODEL,
        "pairs": PAIRS,
        "sizes": len(ks),
        "nodes": n,
        "threads": torch.get_num_threads(),
        "rounds": ROUNDS,
        "text_tokens": int(tok.shape[1]),
        "text_tokens_cut": int(tok_cut.shape[1]),
        "batched_s": t_batched,
        "batched_hooked_s": t_hooked,
        "loop_s": t_loop,
        "loop_cut_s": t_loop_cut,
        "loop_over_batched": t_loop / t_batched,
        "loop_cut_over_batched": t_loop_cut / t_batched,
        "flops_batched": flops_batched,
        "flops_loop": flops_loop,
        "flops_ratio": flops_loop / flops_batched,
        "max_abs_diff": float((batched - loop).abs().max()),
        "image_block_rows_share": work["image"],
        "text_block_rows_share": work["text"],
        "image_pooled_share": pooled["image"],
        "text_pooled_share": pooled["text"],
    }
    benchmark.extra_info.update(info)
    print(
        f"\n{MODEL}, {PAIRS} pairs, {n} heads, {len(ks)} sizes, {info['threads']} thread(s): "
        f"batched {t_batched:.2f} s (hooked blocks, sparse=False: {t_hooked:.2f} s, "
        f"{t_loop / t_hooked:.2f}x); loop {t_loop:.2f} s ({t_loop / t_batched:.2f}x); loop on "
        f"cut captions ({tok.shape[1]} -> {tok_cut.shape[1]} tokens) {t_loop_cut:.2f} s "
        f"({t_loop_cut / t_batched:.2f}x); block rows run (image / text) {work['image']:.1%} / "
        f"{work['text']:.1%} of the loop's, {pooled['image']:.1%} / {pooled['text']:.1%} of "
        f"them at the pooled token alone; best of {ROUNDS} interleaved rounds; FLOPs "
        f"{flops_batched / 1e9:.0f} vs {flops_loop / 1e9:.0f} G ({info['flops_ratio']:.2f}x); max |diff| "
        f"{info['max_abs_diff']:.2e}"
    )
    assert float((batched - loop).abs().max()) < 1e-4
    assert float((batched - loop_cut).abs().max()) < 1e-4
    assert float((batched - hooked).abs().max()) < 1e-4
