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

import itertools
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from vlmfast.data.synthetic import spec
from vlmfast.data.synthetic.captions import (
    caption_true,
    flipped_relation,
    heldout_combinations,
    relation_caption,
    training_negatives,
)
from vlmfast.data.synthetic.dataset import (
    SyntheticSample,
    make_samples,
    render_batch,
)
from vlmfast.data.synthetic.model import build_clip, pixels_from_uint8, tiny_config
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


def _positives(samples: list[SyntheticSample]) -> np.ndarray:
    """pos[i, j] = caption j is true of image i (exact, from the scenes)."""
    n = len(samples)
    pos = np.zeros((n, n), dtype=bool)
    for i, si in enumerate(samples):
        for j, sj in enumerate(samples):
            pos[i, j] = i == j or caption_true(si.scene, sj.caption)
    return pos


def encode_text_trimmed(model: Any, tokens: Any) -> Any:
    """``model.encode_text`` computed on length buckets cut to their longest sequence.

    Exact for a causal text tower pooled at the EOT (argmax) token: positions after
    a sequence's EOT never influence it. Saves most of the padding compute.
    """
    import torch

    lengths = (tokens != 0).sum(dim=1)
    out = torch.empty((tokens.shape[0], model.text_projection.shape[1]), dtype=torch.float32)
    edges = [0, 8, 12, tokens.shape[1]]
    for lo, hi in itertools.pairwise(edges):
        rows = ((lengths > lo) & (lengths <= hi)).nonzero().flatten()
        if rows.numel() == 0:
            continue
        length = int(lengths[rows].max())
        tok = tokens[rows, :length]
        x = model.token_embedding(tok) + model.positional_embedding[:length]
        x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
        x = model.ln_final(x)
        x = x[torch.arange(x.shape[0]), tok.argmax(dim=-1)] @ model.text_projection
        out = out.index_put((rows,), x)
    return out


def pick_negatives(
    rng: np.random.Generator, sample: SyntheticSample, k: int, flipped: bool = False
) -> list[str]:
    """Up to ``k`` negative texts: binding/relation swaps first, then the others at
    random; with ``flipped``, plus the inverse-relation-word negative of a relation
    caption (``captions.flipped_relation``).

    Never a text with a held-out combination (the compositional split stays unseen).
    """
    first = [
        sample.negatives[n].text
        for n in ("swapped_attributes", "swapped_relation")
        if n in sample.negatives
    ]
    rest = [
        sample.negatives[n].text for n in ("wrong_color", "wrong_shape") if n in sample.negatives
    ]
    rest = [rest[i] for i in rng.permutation(len(rest))]
    out = (first + rest)[:k]
    if flipped:
        flip = flipped_relation(sample.caption)
        if flip is not None and not heldout_combinations(flip):
            out.append(flip.text)
    return out


def relation_recaption(rng: np.random.Generator, sample: SyntheticSample) -> SyntheticSample:
    """``sample`` with a true relation caption of its scene (and that caption's hard
    negatives) in place of its caption; unchanged if it has one object or no
    relation qualifies. Held-out (relation, subject) pairings are never drawn and
    negatives with a held-out combination are dropped, as in the ``train`` split."""
    if sample.caption.kind == "relation" or len(sample.scene.objects) < 2:
        return sample
    cap = relation_caption(rng, sample.scene, banned=spec.HELDOUT_RELATION_SUBJECT)
    if cap is None:
        return sample
    return replace(sample, caption=cap, negatives=training_negatives(rng, sample.scene, cap))


class AuxProbes:
    """Linear read-outs used as auxiliary losses (see ``TrainConfig.aux_weight``).

    Image: for each of the ``GRID**2`` cells, its object's color and shape (or
    "empty"), and for each color and shape its (row, column) where present. Text: the color and shape of each of the first two mentions (or
    "unsaid"/"absent") and the relation word (or none): a text embedding that
    solves it must encode which object is the relation's subject.
    """

    def __init__(self, dim: int) -> None:
        import torch

        cells = spec.GRID * spec.GRID
        self.n_color = len(spec.COLORS) + 1
        self.n_shape = len(spec.SHAPES) + 1
        self.image = torch.nn.Linear(dim, cells * (self.n_color + self.n_shape))
        self.coords = torch.nn.Linear(dim, 2 * (len(spec.COLORS) + len(spec.SHAPES)))
        self.text = torch.nn.Linear(
            dim, 2 * (self.n_color + 1 + self.n_shape + 1) + len(spec.RELATIONS) + 1
        )

    def parameters(self) -> list[Any]:
        return [*self.image.parameters(), *self.coords.parameters(), *self.text.parameters()]

    def coord_targets(self, samples: list[SyntheticSample]) -> tuple[Any, Any]:
        """(row, col) in [-1, 1] of each color and each shape, and where it is present."""
        import torch

        k = len(spec.COLORS) + len(spec.SHAPES)
        target = torch.zeros((len(samples), k, 2))
        present = torch.zeros((len(samples), k, 1))
        half = (spec.GRID - 1) / 2
        for i, s in enumerate(samples):
            for o in s.scene.objects:
                rc = torch.tensor([(o.row - half) / half, (o.col - half) / half])
                for j in (
                    spec.COLORS.index(o.color),
                    len(spec.COLORS) + spec.SHAPES.index(o.shape),
                ):
                    target[i, j] = rc
                    present[i, j] = 1.0
        return target, present

    def image_targets(self, samples: list[SyntheticSample]) -> tuple[Any, Any]:
        import torch

        cells = spec.GRID * spec.GRID
        color = torch.zeros((len(samples), cells), dtype=torch.long)
        shape = torch.zeros((len(samples), cells), dtype=torch.long)
        for i, s in enumerate(samples):
            for o in s.scene.objects:
                cell = o.row * spec.GRID + o.col
                color[i, cell] = 1 + spec.COLORS.index(o.color)
                shape[i, cell] = 1 + spec.SHAPES.index(o.shape)
        return color, shape

    def text_targets(self, samples: list[SyntheticSample]) -> Any:
        import torch

        out = torch.zeros((len(samples), 5), dtype=torch.long)
        for i, s in enumerate(samples):
            cap = s.caption
            for m, mention in enumerate(cap.mentions[:2]):
                # 0: no such mention, 1: mentioned without it, 2 + index: named
                out[i, 2 * m] = 2 + spec.COLORS.index(mention.color) if mention.color else 1
                out[i, 2 * m + 1] = 2 + spec.SHAPES.index(mention.shape) if mention.shape else 1
            if cap.relation is not None:
                out[i, 4] = 1 + spec.RELATIONS.index(cap.relation)
        return out

    def loss(self, img: Any, txt: Any, samples: list[SyntheticSample]) -> Any:
        """Mean cross-entropy of every read-out (``img``/``txt``: unnormalised embeddings)."""
        import torch

        f = torch.nn.functional
        cells = spec.GRID * spec.GRID
        nc, ns = self.n_color, self.n_shape
        color, shape = self.image_targets(samples)
        logits = self.image(img).view(len(samples), cells, nc + ns)
        loss_img = f.cross_entropy(logits[..., :nc].reshape(-1, nc), color.flatten()) + (
            f.cross_entropy(logits[..., nc:].reshape(-1, ns), shape.flatten())
        )
        target, present = self.coord_targets(samples)
        pred = self.coords(img).view(target.shape)
        loss_img = loss_img + ((pred - target) ** 2 * present).sum() / present.sum().clamp(min=1)
        # text classes: colors 0 absent, 1 unsaid, 2.. ; shapes likewise
        t = self.text_targets(samples)
        tl = self.text(txt)
        sizes = [nc + 1, ns + 1, nc + 1, ns + 1, len(spec.RELATIONS) + 1]
        bounds = np.cumsum([0, *sizes])
        loss_txt = sum(
            f.cross_entropy(tl[:, bounds[k] : bounds[k + 1]], t[:, k]) for k in range(len(sizes))
        )
        return loss_img + loss_txt


def contrastive_loss(
    img: Any, txt: Any, neg: Any, neg_owner: Any, pos: Any, logit_scale: Any
) -> Any:
    """Symmetric InfoNCE on each pair's own caption, with per-image hard negatives.

    img [B, D], txt [B, D], neg [N, D] (normalised); neg_owner [N] image index of
    each negative; pos [B, B] bool (caption j true of image i).

    The target of image i is its own caption i only. Other in-batch captions that
    are also true of image i (``pos``) are removed from its denominator (they are
    not negatives), and likewise other images a caption is true of. The target
    must not be the *set* of true captions: a multi-positive target lets an image
    satisfy the loss with an order-free caption ("a red circle and a blue square")
    scoring far above both a relation caption and its swapped-relation negative,
    so the hard negative never gets a gradient (the cause of the first bundled
    model's chance-level relations).
    """
    import torch

    b = img.shape[0]
    eye = torch.eye(b, dtype=torch.bool, device=img.device)
    other_true = pos & ~eye
    scale = logit_scale.exp()
    it = (scale * img @ txt.T).masked_fill(other_true, float("-inf"))  # [B, B]
    ineg = scale * img @ neg.T  # [B, N]
    own = neg_owner[None, :] == torch.arange(b, device=img.device)[:, None]
    ineg = ineg.masked_fill(~own, float("-inf"))
    target = torch.arange(b, device=img.device)
    loss_i = torch.nn.functional.cross_entropy(torch.cat([it, ineg], dim=1), target)
    loss_t = torch.nn.functional.cross_entropy(it.T, target)
    return 0.5 * (loss_i + loss_t)


def _step_loss(
    model: Any,
    px: Any,
    tokens: Any,
    owner: Any,
    pos: Any,
    samples: list[SyntheticSample],
    probes: AuxProbes | None,
    aux_weight: float,
) -> Any:
    """The step's loss: ``contrastive_loss`` on the batch (captions first in
    ``tokens``, then the hard negatives), plus the weighted probe losses."""
    import torch

    img_raw = model.encode_image(px)
    txt_raw = encode_text_trimmed(model, tokens)
    img = torch.nn.functional.normalize(img_raw, dim=-1)
    txt = torch.nn.functional.normalize(txt_raw, dim=-1)
    b = len(samples)
    loss = contrastive_loss(img, txt[:b], txt[b:], owner, pos, model.logit_scale)
    if probes is not None:
        loss = loss + aux_weight * probes.loss(img_raw, txt_raw[:b], samples)
    return loss


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
        samples = make_samples(
            cfg.seed, "train", range(step * cfg.batch_size, (step + 1) * cfg.batch_size)
        )
        step_rng = np.random.default_rng([cfg.seed, 7, step])
        if cfg.relation_boost > 0:
            boost_rng = np.random.default_rng([cfg.seed, 8, step])
            samples = [
                relation_recaption(boost_rng, s) if boost_rng.random() < cfg.relation_boost else s
                for s in samples
            ]
        px = pixels_from_uint8(render_batch(samples, noise_std=cfg.noise_std))
        neg_texts, owner = [], []
        for i, s in enumerate(samples):
            for text in pick_negatives(step_rng, s, cfg.max_negatives, cfg.flipped_negatives):
                neg_texts.append(text)
                owner.append(i)
        tokens = tok([s.caption.text for s in samples] + neg_texts)
        pos = torch.from_numpy(_positives(samples))
        for group in opt.param_groups:
            group["lr"] = _lr_at(cfg, step)
        loss = _step_loss(
            model, px, tokens, torch.tensor(owner), pos, samples, probes, cfg.aux_weight
        )
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
