"""Auxiliary read-out losses of the tiny CLIP's training (``TrainConfig.aux_weight``):
where each color and shape sits in the image, and what the caption says about whom."""

from __future__ import annotations

from typing import Any

import numpy as np

from vlmfast.data.synthetic import spec
from vlmfast.data.synthetic.dataset import SyntheticSample


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
