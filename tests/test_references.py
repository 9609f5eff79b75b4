"""No file of the project cites a document that is not in the project: every repository
path a text file names (``docs/...``, ``examples/...``, ``tests/...`` ...) and every
relative Markdown link exists, and nothing cites the design document, which is not part
of the repository."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GENERATED = {
    "docs/reference/config.md",
    "docs/reference/cli.md",
    "docs/tutorials/walkthrough.ipynb",
}
"""Written by ``make docs`` (git-ignored): a reference to them is not stale."""
ROOTS = ("docs", "examples", "benches", "tests", "python/vlmfast", "kernels", "rust_core", ".ci")
PATH = re.compile(
    r"(?<![\w./-])((?:" + "|".join(re.escape(r) for r in ROOTS) + r")/[\w./-]*\w"
    r"\.(?:md|toml|py|rs|ipynb|png|svg|json|yml))"
)
LINK = re.compile(r"\]\(([^)\s]+)\)")
ABSENT_DOCUMENT = "DESIGN" + ".md"  # split, so this file does not cite it


def _text_files() -> list[Path]:
    """Tracked files and untracked ones git does not ignore, that read as UTF-8 text."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: the files of the project are unknown")
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    files = []
    for name in out.splitlines():
        path = ROOT / name
        if not path.is_file() or path.suffix in (".lock", ".png", ".svg", ".so", ".ipynb"):
            continue
        try:
            path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        files.append(path)
    return files


def _exists(path: Path) -> bool:
    return path.exists() or path.resolve().relative_to(ROOT.resolve()).as_posix() in GENERATED


def test_named_repository_paths_exist() -> None:
    missing = [
        f"{f.relative_to(ROOT)}: {ref}"
        for f in _text_files()
        for ref in PATH.findall(f.read_text(encoding="utf-8"))
        if not _exists(ROOT / ref)
    ]
    assert not missing, "paths named but not in the repository:\n" + "\n".join(missing)


def test_relative_markdown_links_exist() -> None:
    missing = []
    for f in _text_files():
        if f.suffix != ".md":
            continue
        for target in LINK.findall(f.read_text(encoding="utf-8")):
            path = target.split("#", 1)[0]
            if path and not re.match(r"^[a-z][a-z0-9+.-]*:", path) and not _exists(f.parent / path):
                missing.append(f"{f.relative_to(ROOT)}: {target}")
    assert not missing, "broken relative links:\n" + "\n".join(missing)


def test_no_file_cites_the_design_document() -> None:
    citing = [
        str(f.relative_to(ROOT))
        for f in _text_files()
        if ABSENT_DOCUMENT in f.read_text(encoding="utf-8")
    ]
    assert not citing, f"{ABSENT_DOCUMENT} is not in the project; cited by: {citing}"
