"""The one formatter: every number the report shows goes through :func:`cell`.

``results.json`` stores raw values; ``report.html`` and ``report.md`` both print them
with :func:`cell` (and a test checks that every formatted value of ``results.json``
appears in both documents). A cell is a string, a number, a bool, None, or an interval
``{"value": x, "low": lo, "high": hi}``; the column's *style* says how numbers read:

- ``num``: 3 decimals (``0.931``); ``delta``: signed (``+0.270``); ``pct``: one decimal
  and a percent sign (``14.0%``); ``int``: thousands separators (``1,842``);
  ``p``: a p-value (``0.048``, ``<0.001``); ``sec``: seconds (``2.2 s``); ``text``: as is.
"""

from __future__ import annotations

import math
from typing import Any

STYLES = ("num", "delta", "pct", "int", "p", "sec", "text")
MISSING = "n/a"


def number(x: Any, style: str = "num") -> str:
    """One scalar in ``style`` (see the module doc); None and NaN read ``n/a``."""
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    if x is None:
        return MISSING
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, str) or style == "text":
        return str(x)
    v = float(x)
    if not math.isfinite(v):
        return MISSING
    if style == "int":
        return f"{round(v):,}"
    if style == "pct":
        return f"{v:.1f}%"
    if style == "delta":
        return "0.000" if v == 0 else f"{v:+.3f}"
    if style == "p":
        return "<0.001" if v < 0.001 else f"{v:.3f}"
    if style == "sec":
        return f"{v:.1f} s"
    if isinstance(x, int) and not isinstance(x, bool):
        return f"{x:,}"
    return f"{v:.3f}"


def is_interval(x: Any) -> bool:
    return isinstance(x, dict) and "value" in x


def cell(x: Any, style: str = "num") -> str:
    """A table cell: a scalar, or ``value [low, high]`` for an interval."""
    if is_interval(x):
        inner = style if style != "int" else "int"
        out = number(x["value"], style)
        if x.get("low") is not None or x.get("high") is not None:
            out += f" [{number(x.get('low'), inner)}, {number(x.get('high'), inner)}]"
        return out
    if isinstance(x, list):
        return ", ".join(number(v, style) for v in x)
    return number(x, style)


def interval(value: Any, low: Any = None, high: Any = None) -> dict[str, Any]:
    """An interval cell (JSON-ready; non-finite floats become None)."""
    return {"value": finite(value), "low": finite(low), "high": finite(high)}


def finite(x: Any) -> Any:
    """``x`` with NaN/inf floats as None (results.json is strict JSON)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x
