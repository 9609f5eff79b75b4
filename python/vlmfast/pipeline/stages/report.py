"""Stage ``report``: the run's HTML / Markdown report (``vlmfast.report.build_report``)."""

from __future__ import annotations

from typing import Any

from vlmfast.errors import InputError
from vlmfast.pipeline.context import StageContext


def run(ctx: StageContext) -> dict[str, Any]:
    try:
        from vlmfast.report import build_report  # type: ignore[attr-defined,unused-ignore]
    except ImportError as err:
        raise InputError(
            f"the report stage needs vlmfast.report.build_report, which is not importable "
            f"({err}); leave 'report' out of [run].stages to run the rest"
        ) from None
    files = build_report(ctx.run_dir)
    out: dict[str, str] = {}
    for name, path in files.items():
        try:
            out[name] = str(path.resolve().relative_to(ctx.run_dir.resolve()))
        except ValueError:
            out[name] = str(path)
    for name, rel in out.items():
        ctx.log(f"  {name}: {ctx.run_dir / rel}")
    return {"files": out, "title": ctx.config.report.title}
