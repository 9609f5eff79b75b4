"""The documentation site: every public name has a docstring, the generated config
reference covers every section, and ``mkdocs build --strict`` passes (a broken link, a
reference to a missing name or an unreadable docstring fails it)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
sys.path.insert(0, str(DOCS))

from gen_reference import cli_reference, config_reference, missing_docstrings  # noqa: E402


def test_every_public_name_has_a_docstring() -> None:
    assert missing_docstrings() == []


def test_config_reference_has_every_section_and_key() -> None:
    from vlmfast.pipeline.config import PipelineConfig

    text = config_reference()
    for section in dataclasses.fields(PipelineConfig):
        assert f"## `[{section.name}]`" in text
        cls = type(section.default_factory())  # type: ignore[operator]
        for key in dataclasses.fields(cls):
            assert f"| `{key.name}` |" in text, f"[{section.name}] {key.name}"


def test_cli_reference_has_every_command() -> None:
    from vlmfast.cli import build_parser

    text = cli_reference()
    assert "## `vlmfast run`" in text and "--config" in text
    assert text.count("## `vlmfast ") > 5
    assert build_parser().prog in text


def _site_copy(tmp: Path) -> Path:
    """``mkdocs.yml`` and ``docs/`` copied under ``tmp`` (everything else linked), with
    the tutorial as the executed notebook where ``make docs`` made one, else converted
    unexecuted from its ``.py`` (the site renders either)."""
    for entry in ROOT.iterdir():
        if entry.name not in ("docs", "site", "mkdocs.yml", ".git", ".cache"):
            (tmp / entry.name).symlink_to(entry)
    shutil.copy(ROOT / "mkdocs.yml", tmp / "mkdocs.yml")
    shutil.copytree(DOCS, tmp / "docs", ignore=shutil.ignore_patterns("__pycache__"))
    for script in (tmp / "docs" / "tutorials").glob("*.py"):
        notebook = script.with_suffix(".ipynb")
        if not notebook.exists():
            import jupytext

            jupytext.write(jupytext.read(script), notebook)
    return tmp / "mkdocs.yml"


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    mkdocs = Path(sys.executable).parent / "mkdocs"
    if not mkdocs.exists():
        pytest.skip(f"{mkdocs} is missing: install the docs extra (requirements.lock)")
    config = _site_copy(tmp_path)
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run(
        [str(mkdocs), "build", "--strict", "-q", "-f", str(config), "-d", str(tmp_path / "site")],
        cwd=tmp_path, capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert (tmp_path / "site" / "tutorials" / "walkthrough" / "index.html").is_file()
    assert (tmp_path / "site" / "reference" / "config" / "index.html").is_file()
