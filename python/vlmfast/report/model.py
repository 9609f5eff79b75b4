"""The report's document model: sections of tables, as plain JSON (``results.json``).

A *table* is ``{"id", "title", "note", "columns": [{"key", "label", "style"}], "rows"}``;
each row maps column keys to cells (see :mod:`vlmfast.report.fmt`). A *section* is
``{"id", "title", "status": "ran" | "not run", "note", "tables"}``. HTML and Markdown
render the same model with the same formatter.
"""

from __future__ import annotations

from typing import Any

from vlmfast.report.fmt import STYLES, finite


def col(key: str, label: str, style: str = "num") -> dict[str, str]:
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    return {"key": key, "label": label, "style": style}


def table(
    tid: str,
    title: str,
    columns: list[dict[str, str]],
    rows: list[dict[str, Any]],
    note: str = "",
) -> dict[str, Any]:
    keys = [c["key"] for c in columns]
    clean = [{k: clean_cell(r.get(k)) for k in keys} for r in rows]
    return {"id": tid, "title": title, "note": note, "columns": columns, "rows": clean}


def clean_cell(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: clean_cell(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [clean_cell(v) for v in x]
    if hasattr(x, "item") and not isinstance(x, str | bytes):  # numpy scalars
        x = x.item()
    return finite(x)


def section(
    sid: str, title: str, tables: list[dict[str, Any]] | None = None, note: str = ""
) -> dict[str, Any]:
    return {"id": sid, "title": title, "status": "ran", "note": note, "tables": tables or []}


def not_run(sid: str, title: str, reason: str) -> dict[str, Any]:
    return {"id": sid, "title": title, "status": "not run", "note": reason, "tables": []}
