"""build_report: one formatter for HTML and Markdown, determinism, "not run", no URLs."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import xml.etree.ElementTree as ET
from html import unescape
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from vlmfast.report import build_report
from vlmfast.report.fmt import cell, number
from vlmfast.report.paper_claims import CLAIMS, claim


class _Page(HTMLParser):
    """Collects text, attributes and data-key cells of a report page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text: list[str] = []
        self.attrs: list[tuple[str, str, str]] = []
        self.cells: dict[str, str] = {}
        self._key: str | None = None
        self._style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for k, v in attrs:
            self.attrs.append((tag, k, v or ""))
            if k == "data-key":
                self._key = v
                self.cells[v or ""] = ""
        self._style = tag in ("style", "script")

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self._key = None
        self._style = False

    def handle_data(self, data: str) -> None:
        if not self._style:
            self.text.append(data)
        if self._key is not None:
            self.cells[self._key] += data


def _parse(path: Path) -> _Page:
    p = _Page()
    p.feed(path.read_text())
    return p


def _formatted(results: dict[str, Any]) -> list[tuple[str, str]]:
    """``(data-key, formatted text)`` of every table cell of results.json."""
    out = []
    for s in results["sections"]:
        for t in s["tables"]:
            for i, row in enumerate(t["rows"]):
                for c in t["columns"]:
                    out.append(
                        (f"{s['id']}/{t['id']}/{i}/{c['key']}", cell(row[c["key"]], c["style"]))
                    )
    return out


# ---------------------------------------------------------------- the formatter


def test_formatter_styles() -> None:
    assert number(0.93149) == "0.931"
    assert number(0.27, "delta") == "+0.270" and number(-0.1, "delta") == "-0.100"
    assert number(0.0, "delta") == "0.000"
    assert number(1842, "int") == "1,842" and number(1842.0, "int") == "1,842"
    assert number(14.04, "pct") == "14.0%"
    assert number(0.0004, "p") == "<0.001" and number(0.048, "p") == "0.048"
    assert number(float("nan")) == "n/a" and number(None) == "n/a"
    assert number(x=True) == "yes" and number(x=False, style="text") == "no"
    assert cell({"value": 0.931, "low": 0.922, "high": 0.939}) == "0.931 [0.922, 0.939]"
    assert cell({"value": 3, "low": 2, "high": 10}, "int") == "3 [2, 10]"
    with pytest.raises(ValueError, match="style"):
        number(1.0, "bogus")


def test_paper_claims_are_labelled_and_cited() -> None:
    for key, (text, where) in CLAIMS.items():
        assert text and where.startswith(("§", "abstract")), key
        assert claim(key).endswith(f"(paper, {where})")


# ---------------------------------------------------------------- not run


def test_empty_run_reads_not_run(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(
        json.dumps(
            {
                "config": {"model": "synthetic:tiny"},
                "config_hash": "abc123",
                "versions": {"vlmfast": "0.1.0"},
                "stages": [
                    {
                        "name": "trace",
                        "key": None,
                        "status": "skipped",
                        "reason": "not configured",
                        "seconds": 0.0,
                    }
                ],
            }
        )
    )
    # an interrupted stage: a result without its manifest does not count
    (run / "score").mkdir()
    (run / "score" / "result.json").write_text("{}")
    paths = build_report(run)
    results = json.loads(paths["results"].read_text())
    by_id = {s["id"]: s for s in results["sections"]}
    for sid in (
        "quality",
        "sae_eval",
        "selectivity",
        "tracing",
        "heads",
        "circuits",
        "interventions",
        "crossmodal",
        "dashboards",
        "ground_truth",
    ):
        assert by_id[sid]["status"] == "not run", sid
        assert by_id[sid]["note"].startswith("not run"), sid
    assert by_id["tracing"]["note"] == "not run: not configured"
    assert "did not finish" in by_id["selectivity"]["note"]
    html, md = paths["html"].read_text(), paths["markdown"].read_text()
    assert html.count('data-status="not-run"') == 10
    assert md.count("> not run") == 10
    assert "abc123" in html and "abc123" in md


def test_missing_run_dir_is_an_input_error(tmp_path: Path) -> None:
    from vlmfast.errors import InputError

    with pytest.raises(InputError, match="run_dir"):
        build_report(tmp_path / "nope")


# ---------------------------------------------------------------- a real run


@pytest.mark.slow
def test_every_value_in_both_documents(report: dict[str, Path]) -> None:
    results = json.loads(report["results"].read_text())
    page = _parse(report["html"])
    md = report["markdown"].read_text().replace("\\|", "|")
    cells = _formatted(results)
    assert len(cells) > 300
    for key, text in cells:
        assert unescape(page.cells[key]) == text, key
        if text:
            assert text in md, (key, text)
    assert len(page.cells) == len(cells)  # no number in a table that results.json lacks


@pytest.mark.slow
def test_results_match_the_stage_files(run_dir: Path, report: dict[str, Path]) -> None:
    results = json.loads(report["results"].read_text())
    sec = {s["id"]: s for s in results["sections"]}
    assert all(
        sec[s]["status"] == "ran"
        for s in (
            "quality",
            "selectivity",
            "tracing",
            "heads",
            "circuits",
            "interventions",
            "dashboards",
            "ground_truth",
        )
    )
    score = json.loads((run_dir / "score" / "result.json").read_text())
    sel = {
        (r["modality"], r["units"], r["kind"]): r for r in sec["selectivity"]["tables"][0]["rows"]
    }
    for mod, e in score["modalities"].items():
        for kind, k in e["by_kind"].items():
            r = sel[(mod, f"SAE features of {e['hook']}", kind)]
            assert r["selective"] == {"value": k["count"], "low": k["low"], "high": k["high"]}
    trace = json.loads((run_dir / "trace" / "result.json").read_text())
    for row in sec["tracing"]["tables"][0]["rows"]:
        tr = trace[row["tower"]]
        keep = [j for j, lab in enumerate(tr["labels"]) if lab != "CLS"]
        rec = tr["recovery"][row["kind"]]
        assert row["peak"] == max(r[j] for r in rec for j in keep)
        assert row["at"].split(", ")[1] != "CLS"
    gt = {(r["concept"], r["modality"]): r for r in sec["ground_truth"]["tables"][1]["rows"]}
    for name, per in score["ground_truth"]["concepts"].items():
        for mod, e in per.items():
            assert gt[(name, mod)]["auroc"]["value"] == e["auroc"]
            assert gt[(name, mod)]["unit"] == e["feature"]
    iv = json.loads((run_dir / "intervene" / "result.json").read_text())
    steer = {r["concept"]: r for r in sec["interventions"]["tables"][1]["rows"]}
    for concept, r in iv["steer"].items():
        assert steer[concept]["target"] == r["target"]["delta"]["cosine"]
        assert steer[concept]["others"] == r["others"]["mean"]["cosine"]
    # every paper figure sits in a column labelled as the paper's claim
    for s in results["sections"]:
        for t in s["tables"]:
            for c in t["columns"]:
                vals = [r[c["key"]] for r in t["rows"] if isinstance(r[c["key"]], str)]
                if any("(paper," in v for v in vals):
                    assert c["label"] == "paper's claim", (t["id"], c["key"])


@pytest.mark.slow
def test_report_is_deterministic(run_dir: Path, report: dict[str, Path], tmp_path: Path) -> None:
    again = build_report(run_dir, tmp_path / "again")
    for name in ("html", "markdown", "results"):
        assert report[name].read_bytes() == again[name].read_bytes(), name
    pages = sorted(p.name for p in report["features"].glob("*.html"))
    assert pages and pages == sorted(p.name for p in again["features"].glob("*.html"))
    for name in pages:
        assert (report["features"] / name).read_bytes() == (again["features"] / name).read_bytes()


def _check_offline(path: Path) -> int:
    """No URL outside text in the page; every data URI decodes; returns the image count."""
    from PIL import Image

    raw = path.read_text()
    page = _parse(path)
    text = "".join(page.text)
    # every http(s):// in the file is inside text (none in attributes, CSS or scripts)
    assert len(re.findall(r"https?://", raw)) == len(re.findall(r"https?://", text))
    for tag, key, val in page.attrs:
        if not val.startswith("data:"):
            assert not re.search(r"https?:|//", val), (tag, key, val[:60])
        if key in ("src", "href"):
            assert val.startswith(("data:", "#", "features/")), (tag, key, val[:40])
    assert "url(" not in raw and "@import" not in raw
    n = 0
    for _tag, key, val in page.attrs:
        if key == "src" and val.startswith("data:image/png;base64,"):
            Image.open(io.BytesIO(base64.b64decode(val.split(",", 1)[1]))).verify()
            n += 1
    return n


@pytest.mark.slow
def test_report_is_self_contained(report: dict[str, Path]) -> None:
    html = report["html"].read_text()
    assert html.startswith("<!DOCTYPE html>")
    assert _check_offline(report["html"]) > 0
    for page in sorted(report["features"].glob("*.html"))[:5]:
        _check_offline(page)
    # every inline SVG parses as XML
    svgs = re.findall(r"<svg .*?</svg>", html, flags=re.S)
    assert len(svgs) >= 10
    for svg in svgs:
        ET.fromstring(svg)
    assert 'id="s-circuits"' in html and "circuit for red" in html
    assert report["html"].stat().st_size < 8 * 2**20
    # a byte budget per dashboard card (its page holds the card and the shared CSS)
    for page in report["features"].glob("*.html"):
        assert page.stat().st_size < 200_000, page.name


@pytest.mark.slow
def test_cli_report(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from vlmfast.cli import main

    shutil.copytree(run_dir, tmp_path / "run", ignore=shutil.ignore_patterns("report"))
    assert main(["report", "--run", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "report" / "report.html").is_file()
    assert "report.html" in capsys.readouterr().out


def test_run_without_run_json(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    paths = build_report(tmp_path / "run")
    results = json.loads(paths["results"].read_text())
    assert results["sections"][0]["tables"][0]["rows"][1]["value"] == "n/a (no run.json)"
    assert all(s["status"] == "not run" for s in results["sections"][1:-1])
    assert "n/a (no run.json)" in paths["markdown"].read_text()
