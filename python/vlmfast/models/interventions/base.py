"""The intervention base class (a hook, selectors and the masked blend) and its
structural protocol."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from vlmfast.errors import InputError
from vlmfast.models.hook_names import HookLayout, layout_for, resolve_hooks
from vlmfast.models.interventions.selectors import Selector, axis_mask, place


class Intervention:
    """Base class: a hook (name or glob) and row/position/head/unit selectors.

    Subclasses implement ``apply(name, x) -> Tensor`` (same shape as ``x``); ``select``
    gives the bool mask of the selected elements (``None`` = everything).

    Raises:
        InputError: (constructing) ``hook`` is not a string.
    """

    def __init__(
        self,
        hook: str,
        *,
        rows: Selector = None,
        positions: Selector = None,
        heads: Selector = None,
        neurons: Selector = None,
    ) -> None:
        if not isinstance(hook, str):
            raise InputError(f"hook must be a hook name or glob string, got {hook!r}")
        self.hook = hook
        self.rows = rows
        self.positions = positions
        self.heads = heads
        self.neurons = neurons
        self._order: dict[str, int] = {}

    def targets(self, hook_points: Sequence[str]) -> list[str]:
        """Returns the concrete hook names this intervention applies to.

        Raises:
            HookNameError: ``hook`` matches no hook of ``hook_points``.
        """
        names = resolve_hooks(self.hook, hook_points)
        self._order = {n: i for i, n in enumerate(names)}
        return names

    def apply(self, name: str, x: Tensor) -> Tensor:
        """Returns the new value of hook ``name`` given its current value ``x`` (same shape).

        Raises:
            NotImplementedError: here; every subclass implements it.
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.hook!r})"

    def select(self, name: str, x: Tensor) -> Tensor | None:
        """Returns the bool mask broadcastable to ``x`` of the elements selected by
        rows/positions/heads/neurons (``None``: everything).

        Raises:
            InputError: a selector does not apply to this hook's shape, or is out of range.
        """
        layout: HookLayout = layout_for(name, x)
        bsz, ndim = x.shape[0], x.dim()
        mask: Tensor | None = None
        axes: list[tuple[Selector, int | None, str]] = [
            (self.positions, layout.position, "positions"),
            (self.heads, layout.head, "heads"),
            (self.neurons, layout.unit, "neurons"),
        ]
        row_mask = axis_mask(self.rows, bsz, bsz, x.device, f"rows of {name}")
        if row_mask is not None:
            mask = row_mask.view([bsz] + [1] * (ndim - 1))
        for sel, dim, what in axes:
            if sel is None:
                continue
            if dim is None:
                raise InputError(
                    f"{what}= does not apply to hook {name!r} (shape {tuple(x.shape)})"
                )
            m = axis_mask(sel, bsz, x.shape[dim], x.device, f"{what} of {name}")
            assert m is not None
            placed = place(m, dim, ndim)
            mask = placed if mask is None else mask & placed
        return mask

    def _blend(self, name: str, x: Tensor, new: Tensor) -> Tensor:
        mask = self.select(name, x)
        if mask is None:
            return new.expand_as(x) if new.shape != x.shape else new
        return torch.where(mask, new, x)


@runtime_checkable
class SupportsIntervention(Protocol):
    """Structural type of an intervention (for type hints in user code)."""

    def targets(self, hook_points: Sequence[str]) -> list[str]: ...

    def apply(self, name: str, x: Tensor) -> Tensor: ...
