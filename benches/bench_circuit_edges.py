"""Circuit edges (``circuit_edges``): batched VJPs vs one backward per target, and exact.

Run: ``.venv/bin/python -m pytest benches/bench_circuit_edges.py -q --benchmark-enable -s
-p no:randomly``. Model ``VLMFAST_BENCH_EDGE_MODEL`` (default ``synthetic:tiny``), every
head of both towers as the circuit, ``VLMFAST_BENCH_EDGE_PAIRS`` pairs (default 4), both
towers corrupted; ``VLMFAST_BENCH_THREADS`` torch threads (default 1).

Each the best of ``VLMFAST_BENCH_ROUNDS`` (default 3), in one process:

- ``fwd_bwd``: one corrupt forward of both towers and one backward (the unit);
- ``atp``: ``method="atp"``, all targets (every node's ``s_v`` and the metric) stacked on
  the batch, one backward per chunk of ``max_rows`` rows;
- ``atp loop``: the same with ``max_rows`` = the batch (one forward + backward per target:
  what feature-circuits does, one backward per downstream node);
- ``exact`` / ``exact loop``: the frozen-patch reference, batched / one source per forward.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import torch

import vlmfast as vf
from vlmfast.causal.circuits.types import CircuitNode

MODEL = os.environ.get("VLMFAST_BENCH_EDGE_MODEL", "synthetic:tiny")
PAIRS = int(os.environ.get("VLMFAST_BENCH_EDGE_PAIRS", 4))
ROUNDS = int(os.environ.get("VLMFAST_BENCH_ROUNDS", 3))
THREADS = int(os.environ.get("VLMFAST_BENCH_THREADS", 1))


def _best(fn: Callable[[], Any]) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def test_edges_batched_vs_loop_and_exact(benchmark: Any) -> None:
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)  # the random weights (figures must be reproducible)
    pair = vf.load_pair(MODEL)
    cfg = pair.config
    gen = torch.Generator().manual_seed(0)
    s = cfg.image.image_size
    px, px_c = torch.randn(2, PAIRS, 3, s, s, generator=gen)
    tok = torch.randint(1, cfg.text.vocab_size - 1, (PAIRS, cfg.text.context_length), generator=gen)
    tok[:, -1] = cfg.text.vocab_size - 1
    tok_c = tok.flip(0)
    nodes = [
        CircuitNode(t, "heads", layer, h)
        for t in ("image", "text")
        for layer in range(cfg.tower(t).layers)
        for h in range(cfg.tower(t).heads)
    ]

    def edges(**kw: Any) -> Any:
        return vf.causal.circuit_edges(pair, px, tok, px_c, tok_c, nodes=nodes, **kw)

    def fwd_bwd() -> None:
        with torch.enable_grad():
            img = pair.image.run(px_c).embed
            txt = pair.text.run(tok_c).embed
            leaf = [p for p in pair.parameters() if p.requires_grad][:1]
            m = vf.causal.MatchedScore()(
                vf.causal.similarity(img, txt, pair.logit_scale, pair.logit_bias, "logits")
            )
            if leaf:
                torch.autograd.grad(m, leaf)

    t_fb, _ = _best(fwd_bwd)
    t_atp, atp = _best(lambda: edges(method="atp"))
    t_loop, loop = _best(lambda: edges(method="atp", max_rows=PAIRS))
    t_ex, ex = _best(lambda: edges(method="exact"))
    t_exl, _ = _best(lambda: edges(method="exact", max_rows=PAIRS))
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    exact = {(e.src, e.dst): e.effect for e in ex}
    scale = max(abs(v) for v in exact.values())
    rel = max(abs(e.effect - exact[e.src, e.dst]) for e in atp) / scale
    same = max(abs(a.effect - b.effect) for a, b in zip(atp, loop, strict=True))
    info = {
        "model": MODEL,
        "pairs": PAIRS,
        "nodes": len(nodes),
        "edges": len(atp),
        "threads": torch.get_num_threads(),
        "fwd_bwd_s": t_fb,
        "atp_s": t_atp,
        "atp_loop_s": t_loop,
        "exact_s": t_ex,
        "exact_loop_s": t_exl,
        "loop_over_atp": t_loop / t_atp,
        "atp_over_fwd_bwd": t_atp / t_fb,
        "max_rel_atp_vs_exact": rel,
    }
    benchmark.extra_info.update(info)
    print(
        f"\n{MODEL}, {PAIRS} pairs, {len(nodes)} head nodes, {len(atp)} edges, "
        f"{info['threads']} thread(s): fwd+bwd {t_fb:.3f} s; atp {t_atp:.3f} s "
        f"({t_atp / t_fb:.1f}x fwd+bwd), one target per pass {t_loop:.3f} s "
        f"({t_loop / t_atp:.2f}x atp); exact {t_ex:.3f} s, one source per pass {t_exl:.3f} s; "
        f"max |atp - exact| / max |exact| = {rel:.3f}"
    )
    assert same < 1e-4 * scale  # batching changes nothing but the speed
