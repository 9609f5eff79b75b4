"""SAE checkpoints: the saved SAE (:mod:`vlmfast.sae.files`) and resumable training state.

A training checkpoint is a saved SAE (``sae_weights.safetensors`` + ``cfg.json``) plus
``trainer_state.pt`` (optimizer moments, step, dead-latent counters, RNG, the unfolded
biases), so a run resumes exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vlmfast.errors import InputError, ShapeError
from vlmfast.sae.config import TrainConfig
from vlmfast.sae.files import (
    CFG_FILE,
    INCOMPLETE_FILE,
    SPARSIFY_WEIGHTS_FILE,
    TRAINER_STATE_FILE,
    WEIGHTS_FILE,
)
from vlmfast.sae.model import TopKSAE
from vlmfast.sae.trainer import SAETrainer

__all__ = [
    "CFG_FILE",
    "INCOMPLETE_FILE",
    "SPARSIFY_WEIGHTS_FILE",
    "TRAINER_STATE_FILE",
    "WEIGHTS_FILE",
    "load_sae",
    "resume_trainer",
    "save_sae",
    "save_training_checkpoint",
]


def save_sae(sae: TopKSAE, path: str | Path, **extra_cfg: Any) -> Path:
    """Writes ``sae`` (input scale folded in) to directory ``path``.

    Returns:
        The folder written, ``path``.
    """
    return sae.save(path, **extra_cfg)


def load_sae(
    path: str | Path, *, device: str | torch.device = "cpu", allow_incomplete: bool = False
) -> TopKSAE:
    """Returns the SAELens/vlmfast (``sae_weights.safetensors``) or sparsify
    (``sae.safetensors``) SAE saved at ``path``.

    The folder of a training run that did not finish is refused ("incomplete run").

    Raises:
        InputError: ``path`` holds no SAE (or a bad config), or an unfinished run
            (without ``allow_incomplete``).
        ShapeError: the weights disagree with each other or with the config.
    """
    return TopKSAE.load(path, device=device, allow_incomplete=allow_incomplete)


def save_training_checkpoint(trainer: SAETrainer, path: str | Path, **extra_cfg: Any) -> Path:
    """Writes the SAE (folded) plus ``trainer_state.pt``; written so a crash mid-save keeps
    the old one.

    Returns:
        The checkpoint folder, ``path``.
    """
    out = save_sae(trainer.sae, path, **extra_cfg)
    tmp = out / (TRAINER_STATE_FILE + ".tmp")
    torch.save(trainer.state_dict(), tmp)
    tmp.replace(out / TRAINER_STATE_FILE)
    return out


def resume_trainer(
    path: str | Path, *, total_steps: int | None = None, expect_d_in: int | None = None
) -> SAETrainer:
    """Rebuild an :class:`SAETrainer` from a training checkpoint, optimizer state included.

    The checkpoint of a run that has not finished is what resuming is for, so its
    ``INCOMPLETE`` marker is no obstacle here.

    Returns:
        The trainer with the SAE, optimiser and schedule state of the checkpoint.

    Raises:
        InputError: ``path`` has no trainer state.
        ShapeError: the SAE's ``d_in`` is not ``expect_d_in``.
    """
    root = Path(path)
    state_path = root / TRAINER_STATE_FILE
    if not state_path.exists():
        raise InputError(f"cannot resume from {root}: no {TRAINER_STATE_FILE}")
    sae = load_sae(root, allow_incomplete=True)
    if expect_d_in is not None and expect_d_in != sae.d_in:
        raise ShapeError(
            f"cannot resume {root}: the SAE has d_in={sae.d_in} but the data has d_in={expect_d_in}"
        )
    state = torch.load(state_path, map_location="cpu", weights_only=False)
    trainer = SAETrainer(
        sae,
        TrainConfig.from_dict(state["train_cfg"]),
        total_steps=total_steps or int(state["total_steps"]),
        name=root.name,
    )
    trainer.load_state_dict(state)
    return trainer
