"""What a stage is and what it gets: ``StageDef`` (name, upstream, config slice, schema,
body) and ``StageContext`` (config, folders, log, the shared model).

The runner and the stage modules both import these; neither imports the other's module
at import time, so the import graph has no cycle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlmfast.pipeline.config import PipelineConfig


@dataclass
class StageContext:
    """What a stage function gets: the config, its folder and its upstream folders."""

    name: str
    config: PipelineConfig
    run_dir: Path
    dir: Path
    """The stage's folder (``RUN/<stage>``), empty when the stage starts."""
    log: Callable[[str], None]
    progress: bool
    cache: dict[str, Any] = field(default_factory=dict)
    """Objects shared between stages of one process (the loaded model)."""

    def upstream(self, stage: str) -> Path:
        """Returns the folder of an upstream stage (``RUN/<stage>``)."""
        return self.run_dir / stage

    def pair(self) -> Any:
        """Returns the config's model (a ``HookedPair``), loaded once per process and in
        eval mode."""
        if "pair" not in self.cache:
            import vlmfast as vf

            m = self.config.model
            self.cache["pair"] = vf.load_pair(
                m.spec, pretrained=m.pretrained, device=m.device
            ).eval()
        return self.cache["pair"]


StageFn = Callable[[StageContext], dict[str, Any]]


@dataclass(frozen=True)
class StageDef:
    """One stage: its name, its upstream stages, its config slice, its schema and body."""

    name: str
    upstream: tuple[str, ...]
    slice: tuple[str, ...]
    """Dotted config paths whose values enter the key (``sae``, ``run.seed``)."""
    schema: int
    fn: StageFn
    strict_upstream: bool = True
    """False: the stage runs without some of its upstream stages (the report reads what
    exists); their keys still enter its key."""
