"""``build_report``: a run directory -> ``RUN/report/{report.html, report.md, results.json}``."""

from __future__ import annotations

import shutil
from html import escape
from pathlib import Path

from vlmfast.report import dashboards, html, markdown
from vlmfast.report.figures import all_figures, by_section
from vlmfast.report.results import collect, dumps
from vlmfast.report.run_dir import RunDir
from vlmfast.report.sec_circuits import diagram
from vlmfast.report.sec_crossmodal_figures import crossmodal_blocks
from vlmfast.report.sec_scores import score_tables


def build_report(run_dir: str | Path, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Writes the report of ``run_dir`` (default into ``RUN/report/``); returns the paths
    ``{"html", "markdown", "results", "features"}``. Same inputs, same bytes."""
    run = RunDir.open(run_dir)
    out = Path(out_dir) if out_dir is not None else run.path / "report"
    out.mkdir(parents=True, exist_ok=True)
    tables = score_tables(run)
    feats = dashboards.select(run, tables)
    dashboards.render(run, feats)
    results = collect(run, feats)

    figs = by_section(all_figures(run, tables))
    extras: dict[str, list[str]] = {
        sid: [html.figure(f.svg, f.caption) for f in fs] for sid, fs in figs.items()
    }
    circuit_res = run.result("circuit") or {}
    blocks = []
    for concept in sorted(circuit_res):
        svg, _, what = diagram(circuit_res[concept], concept)
        if svg is None:
            blocks.append(
                f'<p class="notrun">circuit diagram of {escape(concept)}: not drawn '
                "(vlmfast.causal.circuits.svg unavailable)</p>"
            )
        else:
            blocks.append(
                html.figure(
                    svg,
                    f"Circuit for {concept}: image tower left, text "
                    f"tower right, meeting at the logit; {what}.",
                )
            )
    if blocks:
        extras["circuits:before"] = blocks
    if cross := crossmodal_blocks(run):
        extras["crossmodal"] = cross
    cards = [f.html for f in feats if f.inline and f.html]
    links = [
        f'<a href="{escape(f.page)}">{escape(f.table.modality)} {f.index}</a>'
        for f in feats
        if not f.inline
    ]
    if cards or links:
        extras["dashboards"] = cards + (
            ['<p class="note">More features (own pages): ' + ", ".join(links) + "</p>"]
            if links
            else []
        )

    feature_dir = out / "features"
    if feature_dir.is_dir():
        shutil.rmtree(feature_dir)
    dashboards.write_pages(out, feats, html.page) if feats else None
    paths = {
        "html": out / "report.html",
        "markdown": out / "report.md",
        "results": out / "results.json",
        "features": feature_dir,
    }
    paths["results"].write_text(dumps(results))
    paths["html"].write_text(html.render(results, extras))
    paths["markdown"].write_text(markdown.render(results, {k: len(v) for k, v in figs.items()}))
    return paths
