"""Top-k sparse autoencoders: model, training (single or sweep, DDP), metrics, checkpoints.

from vlmfast.sae import TopKSAE, SAETrainer, TrainConfig, train
sae = TopKSAE(d_in=768, n_latents=16384, k=32)
trainer = SAETrainer(sae, TrainConfig(), total_steps=1000)
train(batches, [trainer])
sae.save("out/sae")                       # SAELens layout
values, indices = TopKSAE.load("out/sae").encode(x)
"""

from __future__ import annotations

from vlmfast.sae.checkpoint import load_sae, resume_trainer, save_sae, save_training_checkpoint
from vlmfast.sae.config import SAEConfig, TrainConfig
from vlmfast.sae.geometric_median import geometric_median
from vlmfast.sae.losses import auxk_loss, fvu_loss
from vlmfast.sae.metrics import RunningMetrics
from vlmfast.sae.model import ForwardOutput, TopKSAE
from vlmfast.sae.trainer import SAETrainer, StepResult, TrainLog, clean_batch, train

__all__ = [
    "ForwardOutput",
    "RunningMetrics",
    "SAEConfig",
    "SAETrainer",
    "StepResult",
    "TopKSAE",
    "TrainConfig",
    "TrainLog",
    "auxk_loss",
    "clean_batch",
    "fvu_loss",
    "geometric_median",
    "load_sae",
    "resume_trainer",
    "save_sae",
    "save_training_checkpoint",
    "train",
]
