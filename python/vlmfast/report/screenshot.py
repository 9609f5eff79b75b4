"""A full-page screenshot of a run's report (for the README), with the browser checks.

    python -m vlmfast.report.screenshot RUN OUT.png [--width 1400] [--max-height 2400]

Uses Playwright with the system Chromium (``shutil.which("chromium")``; it never
downloads a browser) and builds the report first when ``RUN/report/report.html`` is
missing. Prints what :func:`check_page` found; exits 1 on any problem.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

from vlmfast.errors import InputError

CHECK_JS = """() => {
  const imgs = Array.from(document.images).map(i => ({src: i.src.slice(0, 30),
      ok: i.complete && i.naturalWidth > 0}));
  const svgs = Array.from(document.querySelectorAll('svg')).filter(s => !s.parentElement.closest('svg'))
      .map(s => { const b = s.getBBox(); return b.width > 0 && b.height > 0; });
  const keys = Array.from(document.querySelectorAll('[data-key]'))
      .map(e => [e.getAttribute('data-key'), e.textContent]);
  return {imgs, svgs, keys, text: document.body.innerText,
          selfcheck: document.body.getAttribute('data-selfcheck')};
}"""


def browser_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def check_page(
    html_path: Path, png: Path | None = None, width: int = 1400, max_height: int | None = None
) -> dict[str, Any]:
    """Opens ``html_path`` headless; returns console errors, failed and external
    requests, image / SVG checks, the ``data-key`` cells and the page text."""
    from playwright.sync_api import sync_playwright

    exe = browser_path()
    if exe is None:
        raise InputError("no chromium on PATH (Debian: apt-get install chromium)")
    found: dict[str, Any] = {"console": [], "failed": [], "external": [], "pageerror": []}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox"])
        try:
            ctx = browser.new_context(viewport={"width": width, "height": 900})

            def route(r: Any) -> None:
                url = r.request.url
                if url.startswith(("file:", "data:")):
                    r.continue_()
                else:
                    found["external"].append(url)
                    r.abort()

            ctx.route("**/*", route)
            page = ctx.new_page()
            page.on(
                "console",
                lambda m: found["console"].append(m.text) if m.type == "error" else None,
            )
            page.on("pageerror", lambda e: found["pageerror"].append(str(e)))
            page.on("requestfailed", lambda r: found["failed"].append(r.url))
            page.goto(html_path.resolve().as_uri(), wait_until="load")
            found.update(page.evaluate(CHECK_JS))
            if png is not None:
                png.parent.mkdir(parents=True, exist_ok=True)
                if max_height is None:
                    page.screenshot(path=str(png), full_page=True)
                else:  # the top of the page (a README image)
                    from playwright.sync_api import FloatRect

                    clip = FloatRect(x=0, y=0, width=width, height=max_height)
                    page.screenshot(path=str(png), full_page=True, clip=clip)
        finally:
            browser.close()
    return found


def problems(found: dict[str, Any]) -> list[str]:
    out = [f"console error: {m}" for m in found["console"]]
    out += [f"page error: {m}" for m in found["pageerror"]]
    out += [f"failed request: {u}" for u in found["failed"]]
    out += [f"external request: {u}" for u in found["external"]]
    out += [f"image not decoded: {i['src']}" for i in found.get("imgs", []) if not i["ok"]]
    out += [f"svg {k} has an empty bbox" for k, ok in enumerate(found.get("svgs", [])) if not ok]
    if found.get("selfcheck") != "ok":
        out.append(f"self-check: {found.get('selfcheck')}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vlmfast.report.screenshot")
    ap.add_argument("run", help="run directory")
    ap.add_argument("out", help="PNG to write")
    ap.add_argument("--width", type=int, default=1400)
    ap.add_argument(
        "--max-height", type=int, default=None, help="keep only the top N pixels (README)"
    )
    args = ap.parse_args(argv)
    html_path = Path(args.run) / "report" / "report.html"
    if not html_path.is_file():
        from vlmfast.report import build_report

        html_path = build_report(args.run)["html"]
    found = check_page(html_path, Path(args.out), args.width, args.max_height)
    bad = problems(found)
    for line in bad:
        print(line, file=sys.stderr)
    print(
        f"{args.out}: {len(found['imgs'])} images, {len(found['svgs'])} svgs, "
        f"{len(found['keys'])} table cells, {len(bad)} problems"
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
