"""Contrastive training of the bundled tiny CLIP on the synthetic benchmark.

Each step draws a fresh batch (the run is a pure function of its config):
samples ``step*B .. step*B+B-1`` of the ``train`` split, some re-captioned with
a true relation (``relation_recaption``). The loss is CLIP's symmetric InfoNCE with:

- each image's own caption as its target; other in-batch captions true of it
  (exactly, ``caption_true``) are masked out, neither targets nor negatives;
- every sample's hard negatives (swapped attributes, swapped relation, wrong
  color, wrong shape; plus the inverse-relation-word negative) among the
  image->text candidates of that image only.

Nothing the training adds (re-captions, negatives) holds
a held-out combination of the compositional split.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vlmfast.data.synthetic.aux_probes import AuxProbes
from vlmfast.data.synthetic.batches import pick_negatives, relation_recaption, training_batch
from vlmfast.data.synthetic.losses import contrastive_loss, encode_text_trimmed, step_loss
from vlmfast.data.synthetic.model import build_clip, tiny_config
from vlmfast.data.synthetic.tokenizer import WordTokenizer


@dataclass
class TrainConfig:
    """Settings of one training run (saved next to the weights)."""

    seed: int = 0
    """Seed of the model initialisation and of the training data."""
    steps: int = 1800
    """Optimiser steps."""
    batch_size: int = 128
    """Images per step (each with its caption and hard negatives)."""
    lr: float = 1e-3
    """Peak AdamW learning rate (linear warm-up, cosine decay to 5%)."""
    warmup: int = 100
    """Warm-up steps."""
    weight_decay: float = 0.05
    """AdamW weight decay on matrices (not on gains, biases, embeddings' scales)."""
    max_negatives: int = 2
    """Hard negatives per image in a step: swapped attributes / swapped relation
    first, then wrong color / wrong shape, chosen by the step's generator."""
    noise_std: float = 0.0
    """Gaussian pixel noise of training images (0-255 units)."""
    threads: int = 2
    """torch CPU threads."""
    max_minutes: float = 15.0
    """Stop early (and still save) after this much wall-clock time."""
    flipped_negatives: bool = True
    """Add the inverse-relation-word negative ("A right of B" for "A left of B") to
    relation captions' candidates (on top of ``max_negatives``)."""
    relation_boost: float = 0.5
    """Probability that a 2-3 object training image not captioned with a relation is
    re-captioned with one (a true training relation caption of its scene, with its
    hard negatives): more relation signal per batch, same images, no held-out text."""
    position_init_scale: float = 20.0
    """Multiplies the image tower's position embedding at initialisation. open_clip
    draws it at ``width**-0.5`` per element (norm ~1 per token) while a patch's
    embedding has norm ~6 here: a ViT trained to say which cell a single object is
    in then stays at chance for 300+ steps, and one with 20x larger position
    embeddings learns it in ~100 (so does the relation-aware contrastive loss)."""
    aux_weight: float = 0.5
    """Weight of the auxiliary probe losses (``AuxProbes``): linear read-outs of
    every grid cell's color and shape and of every color's and shape's (row,
    column) from the image embedding, and of each caption's mentions and relation
    from the text embedding. They break the
    symmetry that keeps both towers from encoding relations at initialisation;
    the probes are not part of the saved model."""
    stop_after: int | None = None
    """Stop (and save) after this many steps while keeping the ``steps`` schedule:
    replays a run that ``max_minutes`` cut short (its ``steps_done``) exactly."""


def _lr_at(cfg: TrainConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


def _build(cfg: TrainConfig, config: dict[str, Any]) -> tuple[Any, AuxProbes | None, Any]:
    """The initialised model (position embedding scaled), the probes and AdamW."""
    import torch

    model: Any = build_clip(config)
    with torch.no_grad():
        model.visual.positional_embedding.mul_(cfg.position_init_scale)
    probes = AuxProbes(config["embed_dim"]) if cfg.aux_weight > 0 else None
    decay: list[Any] = []
    no_decay: list[Any] = []
    for name, p in model.named_parameters():
        (decay if p.ndim >= 2 and "embedding" not in name else no_decay).append(p)
    if probes is not None:
        no_decay.extend(probes.parameters())
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.lr,
        betas=(0.9, 0.98),
    )
    return model, probes, opt


def train(
    cfg: TrainConfig,
    out_dir: str | Path | None = None,
    log: Callable[[str], None] = print,
    eval_every: int = 0,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Trains from scratch; returns (open_clip config, state_dict, run info).

    With ``out_dir``, writes ``model.safetensors``, ``config.json`` and ``train.json``.
    """
    import torch

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    config = tiny_config()
    model, probes, opt = _build(cfg, config)
    tok = WordTokenizer(config["text_cfg"]["context_length"])
    start = time.time()
    cpu_start = time.process_time()
    load_start = list(os.getloadavg())
    history: list[dict[str, float]] = []
    step = 0
    for step in range(cfg.steps):
        samples, px, tokens, owner, pos = training_batch(cfg, step, tok)
        for group in opt.param_groups:
            group["lr"] = _lr_at(cfg, step)
        loss = step_loss(model, px, tokens, owner, pos, samples, probes, cfg.aux_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        elapsed = time.time() - start
        if step % 50 == 0 or step == cfg.steps - 1:
            history.append({"step": step, "loss": float(loss.detach()), "minutes": elapsed / 60})
            log(
                f"step {step:5d}  loss {float(loss.detach()):.4f}  lr {_lr_at(cfg, step):.2e}  {elapsed / 60:.1f} min"
            )
        if eval_every and step and step % eval_every == 0:
            from vlmfast.data.synthetic.evaluate import evaluate_model

            res = evaluate_model(model, tok, seed=10_000 + cfg.seed, n=400)
            log(json.dumps({k: round(v, 4) for k, v in res["summary"].items()}))
            model.train()
        if cfg.stop_after is not None and step + 1 >= cfg.stop_after:
            log(f"stopping after step {step} (stop_after={cfg.stop_after})")
            break
        if elapsed > cfg.max_minutes * 60:
            log(f"time limit reached after step {step}")
            break
    info = {
        "train_config": asdict(cfg),
        "n_params": sum(p.numel() for p in model.parameters()),
        "cpu_minutes": (time.process_time() - cpu_start) / 60,
        "steps_done": step + 1,
        "minutes": (time.time() - start) / 60,
        "history": history,
        "torch": torch.__version__,
        "load_average": {"start": load_start, "end": list(os.getloadavg())},
    }
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if out_dir is not None:
        save_model(out_dir, config, state, info)
    return config, state, info


def save_model(
    out_dir: str | Path, config: dict[str, Any], state: dict[str, Any], info: dict[str, Any]
) -> None:
    """Writes ``model.safetensors`` (contiguous float32), ``config.json``, ``train.json``."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous().float() for k, v in state.items()}, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "train.json").write_text(json.dumps(info, indent=2) + "\n")


__all__ = [
    "AuxProbes",
    "TrainConfig",
    "contrastive_loss",
    "encode_text_trimmed",
    "pick_negatives",
    "relation_recaption",
    "save_model",
    "train",
]
