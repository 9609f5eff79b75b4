"""Ablation: zero, mean or resample knock-outs of selected elements."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from vlmfast.errors import InputError, ShapeError
from vlmfast.models.interventions.base import Intervention
from vlmfast.models.interventions.selectors import Selector
from vlmfast.models.interventions.sources import lookup


class Ablate(Intervention):
    """Knocks out selected elements: ``mode="zero"``, ``"mean"`` or ``"resample"``.

    ``mean``: replaced by the mean over the rows of ``reference`` (a tensor, cache dict or
    ``RunOutput``), or by precomputed ``means`` (broadcastable to the hook without its batch
    dimension, or a dict by hook name); with neither, the mean of the current batch.
    ``resample``: each row takes the value of a random row of ``reference`` (default: the
    current batch), drawn with ``seed``.

    Raises:
        InputError: (constructing) an unknown ``mode`` or a hook that is not a string.
    """

    def __init__(
        self,
        hook: str,
        *,
        heads: Selector = None,
        neurons: Selector = None,
        positions: Selector = None,
        rows: Selector = None,
        mode: Literal["zero", "mean", "resample"] = "zero",
        reference: Any = None,
        means: Any = None,
        seed: int = 0,
    ) -> None:
        super().__init__(hook, rows=rows, positions=positions, heads=heads, neurons=neurons)
        if mode not in ("zero", "mean", "resample"):
            raise InputError(f"Ablate mode must be 'zero', 'mean' or 'resample', got {mode!r}")
        self.mode = mode
        self.reference = reference
        self.means = means
        self.seed = seed

    def __repr__(self) -> str:
        return f"Ablate({self.hook!r}, mode={self.mode!r})"

    def apply(self, name: str, x: Tensor) -> Tensor:
        """Returns hook ``name``'s value ``x`` with the selected elements ablated.

        Raises:
            ShapeError: ``means`` or ``reference`` does not fit the hook's shape.
        """
        if self.mode == "zero":
            mask = self.select(name, x)
            return torch.zeros_like(x) if mask is None else x.masked_fill(mask, 0.0)
        if self.mode == "mean":
            if self.means is not None:
                mean = lookup(self.means, name, "Ablate means").to(device=x.device, dtype=x.dtype)
                try:
                    shape = torch.broadcast_shapes(mean.shape, x.shape)
                except RuntimeError:
                    shape = None
                if shape != x.shape:
                    raise ShapeError(
                        f"Ablate means for hook {name!r} has shape {tuple(mean.shape)}, not "
                        f"broadcastable to the hook's {tuple(x.shape)}"
                    )
            else:
                ref = (
                    x
                    if self.reference is None
                    else lookup(self.reference, name, "Ablate reference")
                )
                if ref.shape[1:] != x.shape[1:]:
                    raise ShapeError(
                        f"Ablate reference for hook {name!r} has shape {tuple(ref.shape)}, "
                        f"the hook has {tuple(x.shape)}"
                    )
                mean = ref.mean(dim=0, keepdim=True).to(device=x.device, dtype=x.dtype)
            return self._blend(name, x, mean.expand_as(x))
        ref = x if self.reference is None else lookup(self.reference, name, "Ablate reference")
        if ref.shape[1:] != x.shape[1:]:
            raise ShapeError(
                f"Ablate reference for hook {name!r} has shape {tuple(ref.shape)}, "
                f"the hook has {tuple(x.shape)}"
            )
        gen = torch.Generator().manual_seed(self.seed + self._order.get(name, 0))
        idx = torch.randint(0, ref.shape[0], (x.shape[0],), generator=gen)
        new = ref[idx.to(ref.device)].to(device=x.device, dtype=x.dtype)
        return self._blend(name, x, new)
