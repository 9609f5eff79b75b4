"""The model-quality section: the cache stage's held-out synthetic-benchmark table."""

from __future__ import annotations

from typing import Any

from vlmfast.report.fmt import interval
from vlmfast.report.model import col, not_run, section, table
from vlmfast.report.run_dir import RunDir

TITLE = "Model quality (held-out synthetic benchmark)"


def quality(run: RunDir) -> dict[str, Any]:
    from vlmfast.scoring.selectivity import wilson_interval

    res = run.result("cache")
    q = (res or {}).get("quality")
    if not q:
        reason = (
            run.why_missing("cache")
            if res is None
            else (
                "not run: the cache stage evaluated no model quality (non-synthetic data or "
                "[quality] disabled)"
            )
        )
        return not_run("quality", TITLE, reason)
    rows = []
    for key in q.get("summary") or {}:
        acc = float(q["summary"][key])
        n = int((q.get("counts") or {}).get(key, 0))
        lo, hi = wilson_interval(round(acc * n), n, 0.95) if n else (None, None)
        rows.append(
            {
                "metric": key,
                "top1": interval(
                    100 * acc, None if lo is None else 100 * lo, None if hi is None else 100 * hi
                ),
                "n": n,
                "floor": None if (f := (q.get("floors") or {}).get(key)) is None else 100 * f,
            }
        )
    return section(
        "quality",
        TITLE,
        [
            table(
                "quality",
                f"Held-out accuracy (seed {q.get('seed')})",
                [
                    col("metric", "metric", "text"),
                    col("top1", "top-1 [95% Wilson]", "pct"),
                    col("n", "n", "int"),
                    col("floor", "floor", "pct"),
                ],
                rows,
                "Accuracy of picking the true caption among hard negatives (or the right "
                "class zero-shot); floor: the bundled model's quality floor.",
            )
        ],
    )
