"""Fixtures of the report tests: one small real run directory, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
from fixture_run import build_run


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run of every stage the library has (the circuit stage left out: it reads
    "not run"), written by library calls on the bundled model."""
    return build_run(tmp_path_factory.mktemp("run") / "run")


@pytest.fixture(scope="session")
def report(run_dir: Path) -> dict[str, Path]:
    from vlmfast.report import build_report

    return build_report(run_dir)
