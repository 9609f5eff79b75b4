"""Samples of the synthetic benchmark: scene + caption + hard negatives + image.

``make_sample(seed, split, index)`` is a pure function of its arguments, so a
dataset of any size, any sub-range or any random subset is reproducible.

Splits (see ``spec.SPLITS``):

- ``train`` / ``test``: 1-3 objects; no held-out (color, shape) object, no caption
  or negative with a held-out combination; captions are one-object (1 object) or
  binding / relation (2-3 objects) half and half;
- ``compositional``: 2-3 objects; even indices caption an object with a held-out
  (color, shape) pair, odd indices a relation with a held-out (relation, subject
  shape) pairing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vlmfast.data.synthetic import spec
from vlmfast.data.synthetic.captions import (
    Caption,
    binding_caption,
    hard_negatives,
    heldout_combinations,
    object_caption,
    relation_caption,
    training_negatives,
)
from vlmfast.data.synthetic.render import render_scene
from vlmfast.data.synthetic.scene import Scene, sample_rng, sample_scene

_SPLIT_ID = {name: k for k, name in enumerate(spec.SPLITS)}
_HELDOUT_PAIRS = sorted(spec.HELDOUT_COLOR_SHAPE)
_HELDOUT_RELS = sorted(spec.HELDOUT_RELATION_SUBJECT)


@dataclass(frozen=True, slots=True)
class SyntheticSample:
    """One benchmark sample (the image is rendered on demand)."""

    index: int
    split: str
    seed: int
    scene: Scene
    caption: Caption
    negatives: dict[str, Caption]

    def image(self, *, texture: bool = False, noise_std: float = 0.0) -> np.ndarray:
        """The rendered image, uint8 [H, W, 3]."""
        rng = noise_rng(self.seed, self.split, self.index) if noise_std > 0 else None
        return render_scene(self.scene, texture=texture, noise_std=noise_std, rng=rng)

    def meta(self) -> dict[str, object]:
        """Exact ground truth as plain data (objects, relations, caption, negatives)."""
        objs = self.scene.objects
        return {
            "split": self.split,
            "objects": [o.as_dict() for o in objs],
            "relations": [
                [f"{objs[i].color} {objs[i].shape}", rel, f"{objs[j].color} {objs[j].shape}"]
                for i, rel, j in self.scene.relations()
            ],
            "caption": self.caption.as_dict(),
            "negatives": {k: c.text for k, c in self.negatives.items()},
            "heldout": heldout_combinations(self.caption),
        }


def noise_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of sample ``index``'s pixel noise (independent of its scene)."""
    return np.random.default_rng([int(seed), _SPLIT_ID[split], int(index), 1])


def _iid(rng: np.random.Generator) -> tuple[Scene, Caption]:
    n = int(rng.choice(3, p=[0.2, 0.4, 0.4])) + 1
    scene = sample_scene(rng, n, allow_heldout=False)
    if n == 1:
        return scene, object_caption(rng, scene.objects[0])
    if rng.random() < 0.5:
        cap = relation_caption(rng, scene, banned=spec.HELDOUT_RELATION_SUBJECT)
        if cap is not None:
            return scene, cap
    return scene, binding_caption(rng, scene)


def _compositional(rng: np.random.Generator, index: int) -> tuple[Scene, Caption]:
    n = int(rng.integers(2, 4))
    if index % 2 == 0:
        pair = _HELDOUT_PAIRS[int(rng.integers(len(_HELDOUT_PAIRS)))]
        scene = sample_scene(rng, n, allow_heldout=False, first=pair)
        if rng.random() < 0.5:
            cap = relation_caption(rng, scene, banned=spec.HELDOUT_RELATION_SUBJECT, involve=0)
            if cap is not None:
                return scene, cap
        return scene, binding_caption(rng, scene, first=0)
    rel, shape = _HELDOUT_RELS[int(rng.integers(len(_HELDOUT_RELS)))]
    colors = [c for c in spec.COLORS if (c, shape) not in spec.HELDOUT_COLOR_SHAPE]
    while True:
        color = colors[int(rng.integers(len(colors)))]
        scene = sample_scene(rng, n, allow_heldout=False, first=(color, shape))
        cap = relation_caption(rng, scene, allowed=frozenset({(rel, shape)}), involve=0)
        if cap is not None:
            return scene, cap


def make_sample(seed: int, split: str, index: int) -> SyntheticSample:
    """Sample ``index`` of ``split`` for ``seed`` (a pure function of the three)."""
    if split not in _SPLIT_ID:
        raise ValueError(f"unknown synthetic split {split!r}; expected one of {spec.SPLITS}")
    rng = sample_rng(seed, split, index)
    if split == "compositional":
        scene, caption = _compositional(rng, index)
        negatives = hard_negatives(rng, scene, caption)
    else:
        scene, caption = _iid(rng)
        negatives = training_negatives(rng, scene, caption)
    return SyntheticSample(index, split, seed, scene, caption, negatives)


def make_samples(seed: int, split: str, indices: Sequence[int] | range) -> list[SyntheticSample]:
    """Samples for each index, in order."""
    return [make_sample(seed, split, i) for i in indices]


def render_batch(
    samples: Sequence[SyntheticSample], *, texture: bool = False, noise_std: float = 0.0
) -> np.ndarray:
    """The images of ``samples`` stacked: uint8 [B, H, W, 3]."""
    out = np.empty((len(samples), spec.IMAGE_SIZE, spec.IMAGE_SIZE, 3), dtype=np.uint8)
    for k, s in enumerate(samples):
        out[k] = s.image(texture=texture, noise_std=noise_std)
    return out
