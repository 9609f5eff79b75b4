"""A trace's tables as arrays: the ``trace_<tower>.npz`` both front doors write."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vlmfast.causal.tracing.result import TraceResult


def trace_arrays(res: TraceResult) -> dict[str, Any]:
    """``effect_<kind>``, ``recovery_<kind>`` and, with a null, ``null_p_<kind>`` arrays."""
    arrays: dict[str, Any] = {f"effect_{k}": v.numpy() for k, v in res.effect.items()}
    arrays |= {f"recovery_{k}": v.numpy() for k, v in res.recovery.items()}
    if res.null:
        arrays |= {f"null_p_{k}": v.p_value.numpy() for k, v in res.null.items()}
    return arrays


def save_trace_arrays(res: TraceResult, path: str | Path) -> Path:
    """Writes :func:`trace_arrays` to ``path`` (``.npz``) and returns the path."""
    out = Path(path)
    np.savez(out, **trace_arrays(res))
    return out


__all__ = ["save_trace_arrays", "trace_arrays"]
