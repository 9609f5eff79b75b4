"""The stages of ``vlmfast run``, one module each, and their registry (in run order).

Each entry names the stage's upstream stages, its config slice (the dotted config paths
whose values enter its key) and its schema version: bump ``schema`` when what a stage
writes changes, so existing runs recompute it.
"""

from __future__ import annotations

from vlmfast.pipeline.context import StageDef
from vlmfast.pipeline.sections import STAGE_NAMES
from vlmfast.pipeline.stages import (
    attribute,
    cache,
    circuit,
    crossmodal,
    intervene,
    report,
    score,
    trace,
    train_sae,
)

_MODEL = ("model.spec", "model.pretrained", "run.seed")

STAGES: dict[str, StageDef] = {
    "cache": StageDef(
        "cache",
        (),
        (
            *_MODEL,
            "data",
            "hooks",
            "cache.batch_size",
            "cache.dtype",
            "cache.chunk_rows",
            "cache.compression",
            "concepts.labels",
            "quality",
        ),
        2,  # 2: synthetic stores hold bound relation labels (`red left of blue`)
        cache.run,
    ),
    "train-sae": StageDef(
        "train-sae",
        ("cache",),
        # sae.rows (which token rows train): a run from before it existed retrains once
        # sae.arch and its options, sae.hooks: a run from before they existed retrains once
        (
            "sae.n_latents",
            "sae.k",
            "sae.steps",
            "sae.batch_size",
            "sae.lr",
            "sae.rows",
            "sae.arch",
            "sae.groups",
            "sae.encoder_init_norm",
            "sae.threshold_ema",
            "sae.threshold_init",
            "sae.bandwidth",
            "sae.l0_coef",
            "sae.l0_coef_adapt",
            "sae.hooks",
            "run.seed",
        ),
        # 2: each SAE's evaluation suite (eval.json) beside its weights; 3: the encoder's
        # initial row norm became 1/sqrt(3) (an older run's SAEs retrain once)
        3,
        train_sae.run,
    ),
    # score 2: the ground truth gains the bound relations' probes
    "score": StageDef("score", ("cache", "train-sae"), ("score",), 2, score.run),
    # trace 2: trace_<tower>.npz also holds null_p_<kind> (vlmfast.causal.tracing.arrays)
    "trace": StageDef("trace", (), (*_MODEL, "data", "trace"), 2, trace.run),
    "attribute": StageDef("attribute", (), (*_MODEL, "data", "attribute"), 1, attribute.run),
    "circuit": StageDef(
        "circuit", (), (*_MODEL, "data", "circuit", "concepts.circuit"), 1, circuit.run
    ),
    "intervene": StageDef(
        "intervene",
        ("train-sae", "score"),
        (*_MODEL, "intervene", "concepts.intervene"),
        1,
        intervene.run,
    ),
    "cross-modal": StageDef(
        "cross-modal",
        ("cache",),
        (*_MODEL, "data", "crossmodal", "concepts.circuit"),
        2,
        crossmodal.run,
    ),
    "report": StageDef(
        "report",
        tuple(name for name in STAGE_NAMES if name != "report"),  # every other stage
        ("report", "run.stages"),
        1,
        report.run,
        strict_upstream=False,
    ),
}
"""Every stage, in run order (a topological order of ``upstream``)."""
