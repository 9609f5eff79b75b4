"""Gradient capture at hooks (attribution patching), leaving the forward unchanged."""

from __future__ import annotations

import torch
from torch import Tensor

from vlmfast.errors import InputError
from vlmfast.models.interventions.base import Intervention


class CaptureGrad(Intervention):
    """Records d(metric)/d(hook value) for attribution patching, without changing the forward.

    Adds a zero tensor that requires grad at each target hook; after
    ``metric.backward()`` (run with grad enabled, not under ``torch.no_grad``),
    ``grads[name]`` is the gradient with respect to that hook's value (the total
    derivative: paths through later hooks are kept) and ``values[name]`` the value.
    """

    def __init__(self, hook: str) -> None:
        super().__init__(hook)
        self.deltas: dict[str, Tensor] = {}
        self.values: dict[str, Tensor] = {}

    def apply(self, name: str, x: Tensor) -> Tensor:
        delta = torch.zeros_like(x, requires_grad=True)
        self.deltas[name] = delta
        self.values[name] = x.detach()
        return x + delta

    @property
    def grads(self) -> dict[str, Tensor]:
        """Gradients by hook name (after ``backward``); raises if backward has not run."""
        out: dict[str, Tensor] = {}
        for name, delta in self.deltas.items():
            if delta.grad is None:
                raise InputError(
                    f"no gradient at hook {name!r}: call backward() on a metric of this run "
                    "(with grad enabled)"
                )
            out[name] = delta.grad
        return out
