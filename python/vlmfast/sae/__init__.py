"""Top-k sparse autoencoders: model, training (single or sweep, DDP), metrics, checkpoints.

from vlmfast.sae import TopKSAE, SAETrainer, TrainConfig, train
sae = TopKSAE(d_in=768, n_latents=16384, k=32)
trainer = SAETrainer(sae, TrainConfig(), total_steps=1000)
train(batches, [trainer])
sae.save("out/sae")                       # SAELens layout
values, indices = TopKSAE.load("out/sae").encode(x)

On a stored hook, the one recipe behind ``vlmfast train-sae`` and the pipeline's
``train-sae`` stage (which token rows: ``rows``, see ``vlmfast.sae.rows``):

from vlmfast.sae import TrainSAEConfig, train_sae
result = train_sae(store, TrainSAEConfig(hook="image.blocks.8.resid_post", k=[32],
                   n_latents=[16384], rows="tokens"), "out/sae")

Modules, lowest first: ``config``, ``rows``, ``median``, ``files`` (the saved layout), ``model``,
``losses`` / ``metrics`` / ``distributed``, ``trainer``, ``checkpoint``, ``data`` (the
batches), ``schedule`` (default lengths), ``recipe``, ``splice``; ``evaluation``
(``evaluate``: FVU, L0, cosine, dead/dense/alive on held-out rows, split by token type),
``downstream`` (the SAE spliced at its hook: KL, zero-shot accuracy, loss recovered with the
model's logit scale), ``eval_suite`` (``evaluate_suite``: both in one call, from a store),
``planted`` (a generator with a known dictionary: frequencies, co-firing groups, parent
and child features) and ``matching`` (``score_dictionary``: mean max cosine and the
matched activation correlation against the truth, with nulls and intervals).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vlmfast.lazy_exports import lazy_exports

if TYPE_CHECKING:
    from vlmfast.sae.archs import build_sae
    from vlmfast.sae.checkpoint import load_sae, resume_trainer, save_sae, save_training_checkpoint
    from vlmfast.sae.config import SAEConfig, TrainConfig, TrainSAEConfig
    from vlmfast.sae.downstream import DownstreamConfig, DownstreamMetrics, downstream_metrics
    from vlmfast.sae.eval_suite import SuiteConfig, SuiteReport, evaluate_suite
    from vlmfast.sae.evaluation import ReconstructionMetrics, SAEEvaluation, evaluate
    from vlmfast.sae.loaders import UnsupportedSAEError, load, parse_spec
    from vlmfast.sae.losses import auxk_loss, fvu_loss
    from vlmfast.sae.matching import (
        DictionaryScore,
        linear_assignment,
        matched_correlation,
        mean_max_cosine,
        score_dictionary,
    )
    from vlmfast.sae.median import geometric_median
    from vlmfast.sae.metrics import RunningMetrics
    from vlmfast.sae.model import ForwardOutput, TopKSAE
    from vlmfast.sae.planted import PlantedBatch, PlantedConfig, PlantedGenerator, make_planted
    from vlmfast.sae.recipe import TrainedSAE, TrainSAEResult, train_sae
    from vlmfast.sae.rows import DEFAULT_ROWS, ROWS
    from vlmfast.sae.trainer import SAETrainer, StepResult, TrainLog, clean_batch, train

# Imported lazily (PEP 562): the command line reads ``vlmfast.sae.rows`` (the ``--rows``
# choices) while it builds its parser, and that must not pull in torch.
_LAZY_ATTRS: dict[str, str] = {
    "build_sae": "vlmfast.sae.archs",
    "load_sae": "vlmfast.sae.checkpoint",
    "resume_trainer": "vlmfast.sae.checkpoint",
    "save_sae": "vlmfast.sae.checkpoint",
    "save_training_checkpoint": "vlmfast.sae.checkpoint",
    "SAEConfig": "vlmfast.sae.config",
    "TrainConfig": "vlmfast.sae.config",
    "TrainSAEConfig": "vlmfast.sae.config",
    "ReconstructionMetrics": "vlmfast.sae.evaluation",
    "SAEEvaluation": "vlmfast.sae.evaluation",
    "evaluate": "vlmfast.sae.evaluation",
    "DownstreamConfig": "vlmfast.sae.downstream",
    "DownstreamMetrics": "vlmfast.sae.downstream",
    "downstream_metrics": "vlmfast.sae.downstream",
    "SuiteConfig": "vlmfast.sae.eval_suite",
    "SuiteReport": "vlmfast.sae.eval_suite",
    "evaluate_suite": "vlmfast.sae.eval_suite",
    "DictionaryScore": "vlmfast.sae.matching",
    "linear_assignment": "vlmfast.sae.matching",
    "matched_correlation": "vlmfast.sae.matching",
    "mean_max_cosine": "vlmfast.sae.matching",
    "score_dictionary": "vlmfast.sae.matching",
    "PlantedBatch": "vlmfast.sae.planted",
    "PlantedConfig": "vlmfast.sae.planted",
    "PlantedGenerator": "vlmfast.sae.planted",
    "make_planted": "vlmfast.sae.planted",
    "geometric_median": "vlmfast.sae.median",
    "UnsupportedSAEError": "vlmfast.sae.loaders",
    "load": "vlmfast.sae.loaders",
    "parse_spec": "vlmfast.sae.loaders",
    "auxk_loss": "vlmfast.sae.losses",
    "fvu_loss": "vlmfast.sae.losses",
    "RunningMetrics": "vlmfast.sae.metrics",
    "ForwardOutput": "vlmfast.sae.model",
    "TopKSAE": "vlmfast.sae.model",
    "TrainSAEResult": "vlmfast.sae.recipe",
    "TrainedSAE": "vlmfast.sae.recipe",
    "train_sae": "vlmfast.sae.recipe",
    "DEFAULT_ROWS": "vlmfast.sae.rows",
    "ROWS": "vlmfast.sae.rows",
    "SAETrainer": "vlmfast.sae.trainer",
    "StepResult": "vlmfast.sae.trainer",
    "TrainLog": "vlmfast.sae.trainer",
    "clean_batch": "vlmfast.sae.trainer",
    "train": "vlmfast.sae.trainer",
}

__all__ = [
    "DEFAULT_ROWS",
    "ROWS",
    "DictionaryScore",
    "DownstreamConfig",
    "DownstreamMetrics",
    "ForwardOutput",
    "PlantedBatch",
    "PlantedConfig",
    "PlantedGenerator",
    "ReconstructionMetrics",
    "RunningMetrics",
    "SAEConfig",
    "SAEEvaluation",
    "SAETrainer",
    "StepResult",
    "SuiteConfig",
    "SuiteReport",
    "TopKSAE",
    "TrainConfig",
    "TrainLog",
    "TrainSAEConfig",
    "TrainSAEResult",
    "TrainedSAE",
    "UnsupportedSAEError",
    "auxk_loss",
    "build_sae",
    "clean_batch",
    "downstream_metrics",
    "evaluate",
    "evaluate_suite",
    "fvu_loss",
    "geometric_median",
    "linear_assignment",
    "load",
    "load_sae",
    "make_planted",
    "matched_correlation",
    "mean_max_cosine",
    "parse_spec",
    "resume_trainer",
    "save_sae",
    "save_training_checkpoint",
    "score_dictionary",
    "train",
    "train_sae",
]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY_ATTRS, __all__)
