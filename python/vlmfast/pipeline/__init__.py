"""``vlmfast run``: the whole research loop as resumable stages driven by one TOML config.

    from vlmfast.pipeline import load_config, run_pipeline
    result = run_pipeline(load_config("examples/demo.toml"), "runs/demo")

Stages (in order): cache, train-sae, score, trace, attribute, circuit, intervene, report.
See :mod:`vlmfast.pipeline.runner` for keys, manifests and skipping, and
:mod:`vlmfast.pipeline.config` for every config field.
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
from vlmfast.pipeline.runner import RunResult, StageContext, StageDef, decide, run_pipeline

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
