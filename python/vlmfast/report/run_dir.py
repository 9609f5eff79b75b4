"""Reading a run directory (the layout ``vlmfast run`` writes) for the report.

A stage's output counts only once its ``manifest.json`` exists (each stage writes it
last, as its commit point): a ``result.json`` without one is an interrupted stage.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmfast.errors import InputError

STAGES = (
    "cache",
    "train-sae",
    "score",
    "trace",
    "attribute",
    "circuit",
    "intervene",
    "cross-modal",
)
"""The pipeline's stages, in order."""


@dataclass
class RunDir:
    """A run directory and what its stages left there."""

    path: Path
    run: dict[str, Any] = field(default_factory=dict)
    """``run.json`` (config, config_hash, versions, stages); empty when absent."""

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        p = Path(path)
        if not p.is_dir():
            raise InputError(f"run_dir {p} is not a directory (a `vlmfast run` output folder)")
        run: dict[str, Any] = {}
        if (p / "run.json").is_file():
            run = json.loads((p / "run.json").read_text())
        return cls(p, run)

    def stage_dir(self, stage: str) -> Path:
        return self.path / stage

    def done(self, stage: str) -> bool:
        """The stage's manifest exists (it finished)."""
        return (self.path / stage / "manifest.json").is_file()

    def why_missing(self, stage: str) -> str:
        """Why a stage has no result: from run.json's stage record, or the files."""
        for st in self.run.get("stages", []) or []:
            named = st.get("name") == stage and st.get("status") == "skipped"
            if named and st.get("reason") and not self.done(stage):
                return f"not run: {st['reason']}"
        if self.done(stage):
            return "not run: the stage finished but left no result.json for the report"
        if (self.path / stage).is_dir():
            return "not run: the stage did not finish (no manifest.json)"
        return "not run: this stage is not in the run's configuration"

    def result(self, stage: str) -> dict[str, Any] | None:
        """``RUN/<stage>/result.json`` of a finished stage, else None."""
        f = self.path / stage / "result.json"
        if not self.done(stage) or not f.is_file():
            return None
        data: dict[str, Any] = json.loads(f.read_text())
        return data

    def score_tables(self) -> list[Path]:
        """The ``scores.zarr`` folders the score stage left (sorted)."""
        base = self.path / "score"
        if not self.done("score"):
            return []
        found = {p for p in base.glob("scores.zarr")} | set(base.glob("*/scores.zarr"))
        found |= set(base.glob("*/*/scores.zarr"))
        return sorted(found)
