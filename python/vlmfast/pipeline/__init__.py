"""``vlmfast run``: the whole research loop as resumable stages driven by one TOML config.

    from vlmfast.pipeline import load_config, run_pipeline
    result = run_pipeline(load_config("examples/demo.toml"), "runs/demo")

Stages (in order): cache, train-sae, score, trace, attribute, circuit, intervene, report.

Modules: ``sections`` (one dataclass per TOML table: every config field, documented),
``config`` (strict loading and validation), ``context`` (``StageDef``, ``StageContext``:
what a stage is and gets), ``runner`` (keys, manifests, skipping) and ``stages/`` (one
module per stage, each a thin caller of the library function its CLI command calls).

Public API: ``PipelineConfig``, ``load_config``, ``parse_config``, ``config_from_dict``,
``demo_config``, ``demo_config_text``, ``STAGE_NAMES``, ``run_pipeline``, ``RunResult``,
``decide``, ``StageContext``, ``StageDef``.
"""

from __future__ import annotations

from vlmfast.pipeline.config import (
    STAGE_NAMES,
    PipelineConfig,
    config_from_dict,
    demo_config,
    demo_config_text,
    load_config,
    parse_config,
)
from vlmfast.pipeline.context import StageContext, StageDef
from vlmfast.pipeline.runner import RunResult, decide, run_pipeline

__all__ = [
    "STAGE_NAMES",
    "PipelineConfig",
    "RunResult",
    "StageContext",
    "StageDef",
    "config_from_dict",
    "decide",
    "demo_config",
    "demo_config_text",
    "load_config",
    "parse_config",
    "run_pipeline",
]
