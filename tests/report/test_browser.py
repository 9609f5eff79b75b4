"""The report in a real browser (Playwright + the system Chromium; never downloads one)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def chromium() -> str:
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    exe = shutil.which("chromium")
    if exe is None:
        pytest.skip("no chromium on PATH (make test installs Debian's chromium)")
    return exe


def test_report_in_chromium(chromium: str, report: dict[str, Path], tmp_path: Path) -> None:
    from vlmfast.report.fmt import cell
    from vlmfast.report.screenshot import check_page, problems

    png = tmp_path / "report.png"
    found = check_page(report["html"], png)
    assert found["console"] == [] and found["pageerror"] == []
    assert found["failed"] == [] and found["external"] == []
    assert found["imgs"] and all(i["ok"] for i in found["imgs"])
    assert found["svgs"] and all(found["svgs"])
    assert found["selfcheck"] == "ok"
    assert problems(found) == []
    cells = dict(found["keys"])
    results = json.loads(report["results"].read_text())
    n = 0
    for s in results["sections"]:
        for t in s["tables"]:
            for i, row in enumerate(t["rows"]):
                for c in t["columns"]:
                    text = cell(row[c["key"]], c["style"])
                    assert cells[f"{s['id']}/{t['id']}/{i}/{c['key']}"] == text
                    if text and n < 400:
                        assert text in found["text"]
                        n += 1
    assert png.stat().st_size > 10_000
    from PIL import Image

    with Image.open(png) as im:
        assert im.size[0] >= 1400 and im.size[1] > 2000


def test_screenshot_command(chromium: str, report: dict[str, Path], tmp_path: Path) -> None:
    from vlmfast.report.screenshot import main

    run = report["html"].parent.parent
    out = tmp_path / "shot.png"
    assert main([str(run), str(out), "--width", "1200", "--max-height", "900"]) == 0
    from PIL import Image

    with Image.open(out) as im:
        assert im.size == (1200, 900)
