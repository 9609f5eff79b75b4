"""Times generating 100k synthetic samples (scene, caption, negatives, image) in one process.

.venv/bin/python benches/gen_100k.py [N]
"""

from __future__ import annotations

import sys
import time

from vlmfast.data.synthetic.dataset import make_samples, render_batch


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    t0 = time.perf_counter()
    total = 0
    for start in range(0, n, 10_000):
        batch = make_samples(0, "train", range(start, min(n, start + 10_000)))
        total += len(render_batch(batch))
    dt = time.perf_counter() - t0
    print(f"{total} samples in {dt:.1f} s ({total / dt:,.0f} samples/s)")


if __name__ == "__main__":
    main()
