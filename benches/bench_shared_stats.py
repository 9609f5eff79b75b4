"""Shared-dictionary statistics over a store-sized set of matched pairs (issue: cross-modal).

Times, in one run on this machine:
  * ``score one modality``: the existing exact scorer (``vlmfast.stats.score_sparse``,
    AUROC, DeLong SE and p-values) on the image rows' top-k codes against C concepts:
    the baseline;
  * ``shared stats``: :func:`vlmfast.crossmodal.shared_dictionary_stats`: one read of the
    matched pairs and one native call: both modalities' exact AUROCs (the scorer's
    buckets) and the moments behind split, Bridge Score, nulls and intervals (merged
    from the same buckets by pair, before they are sorted), plus the p-values.
The issue's bound: the shared statistics take at most 2x the baseline. The shared
statistics compute no DeLong standard errors (the invariant curve uses the p-values);
``ratio`` compares with the scorer as ``vlmfast score`` runs it (with them),
``ratio_without_se`` with the scorer without them (like for like).

    .venv/bin/python benches/bench_shared_stats.py                 # 65,536 x 200 x 1M + 1M
    .venv/bin/python benches/bench_shared_stats.py --pairs 100000  # quicker
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np


def _codes(n: int, f: int, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    # k distinct features per row: a random offset plus a fixed stride pattern
    base = rng.integers(0, f, (n, 1), dtype=np.int64)
    idx = (base + np.arange(k, dtype=np.int64) * (f // k)) % f
    val = rng.gamma(2.0, 1.0, (n, k)).astype(np.float32)
    return idx, val


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=1_000_000)
    ap.add_argument("--features", type=int, default=65_536)
    ap.add_argument("--concepts", type=int, default=200)
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--chunk", type=int, default=65_536)
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    from vlmfast.crossmodal import shared_dictionary_stats
    from vlmfast.stats import score_sparse

    rng = np.random.default_rng(0)
    n, f = args.pairs, args.features
    ii, iv = _codes(n, f, args.k, rng)
    ti, tv = _codes(n, f, args.k, rng)
    img_lab = rng.random((n, args.concepts)) < 0.05
    txt_lab = rng.random((n, args.concepts)) < 0.05

    import torch  # noqa: F401  (imported by the p-values; not part of either timing)

    def score_one(*, with_se: bool) -> float:
        t0 = time.perf_counter()
        score_sparse(ii, iv, img_lab, f, with_se=with_se, stats=False, top_n=0).pvalues("greater")
        return time.perf_counter() - t0

    one, one_plain = score_one(with_se=True), score_one(with_se=False)

    def chunks():  # type: ignore[no-untyped-def]
        for s in range(0, n, args.chunk):
            e = s + args.chunk
            yield ii[s:e], iv[s:e], ti[s:e], tv[s:e]

    t0 = time.perf_counter()
    st = shared_dictionary_stats(chunks, img_lab, txt_lab, f)
    both = time.perf_counter() - t0
    res = {
        "machine": f"{platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cpus",
        "pairs": n,
        "features": f,
        "concepts": args.concepts,
        "k": args.k,
        "score_one_modality_s": round(one, 2),
        "score_one_modality_without_se_s": round(one_plain, 2),
        "shared_stats_s": round(both, 2),
        "ratio": round(both / one, 2),
        "ratio_without_se": round(both / one_plain, 2),
        "bimodal_features": st.split.counts()["bimodal"],
    }
    print(json.dumps(res, indent=1))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=1)


if __name__ == "__main__":
    main()
