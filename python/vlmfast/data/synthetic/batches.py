"""Training batches of the tiny CLIP: fresh samples per step, relation re-captions,
hard negatives, and which in-batch captions are true of which image.

Nothing the training adds (re-captions, negatives) holds a held-out combination of
the compositional split.
"""

from __future__ import annotations

from dataclasses import replace
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
from vlmfast.data.synthetic.dataset import SyntheticSample, make_samples, render_batch
from vlmfast.data.synthetic.model import pixels_from_uint8
from vlmfast.data.synthetic.tokenizer import WordTokenizer


def positives(samples: list[SyntheticSample]) -> np.ndarray:
    """pos[i, j] = caption j is true of image i (exact, from the scenes)."""
    n = len(samples)
    pos = np.zeros((n, n), dtype=bool)
    for i, si in enumerate(samples):
        for j, sj in enumerate(samples):
            pos[i, j] = i == j or caption_true(si.scene, sj.caption)
    return pos


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


def training_batch(
    cfg: Any, step: int, tok: WordTokenizer
) -> tuple[list[SyntheticSample], Any, Any, Any, Any]:
    """Step ``step``'s batch ``(samples, pixels, tokens, negative owners, positives)``:
    samples ``step*B .. step*B+B-1`` of the ``train`` split (some re-captioned with a
    true relation), then each sample's hard negatives after the captions in ``tokens``."""
    import torch

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
    pos = torch.from_numpy(positives(samples))
    return samples, px, tokens, torch.tensor(owner), pos
