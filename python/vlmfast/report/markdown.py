"""``report.md``: the same tables as ``report.html``, through the same formatter."""

from __future__ import annotations

from typing import Any

from vlmfast.report.fmt import cell


def _esc(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_table(t: dict[str, Any]) -> str:
    cols = t["columns"]
    lines = [f"**{_esc(t['title'])}**", ""]
    lines.append("| " + " | ".join(_esc(c["label"]) or " " for c in cols) + " |")
    lines.append("|" + "|".join("---" for _ in cols) + "|")
    for row in t["rows"]:
        lines.append(
            "| " + " | ".join(_esc(cell(row.get(c["key"]), c["style"])) for c in cols) + " |"
        )
    if t.get("note"):
        lines += ["", f"_{_esc(t['note'])}_"]
    return "\n".join(lines) + "\n"


def render(results: dict[str, Any], figures: dict[str, int]) -> str:
    """``figures[section id]``: how many figures report.html shows there."""
    out = []
    for s in results["sections"]:
        if s["id"] == "header":
            out.append(f"# {s['title']}\n")
        else:
            out.append(f"## {s['title']}\n")
            if s["status"] != "ran":
                out.append(f"> {s['note']}\n")
                continue
            if s.get("note"):
                out.append(f"{s['note']}\n")
        for t in s["tables"]:
            out.append(render_table(t))
        if figures.get(s["id"]):
            out.append(f"_{figures[s['id']]} figure(s) in report.html._\n")
        if "config" in s:
            out.append("```json\n" + s["config"] + "\n```\n")
    return "\n".join(out)
