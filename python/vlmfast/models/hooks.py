"""The per-run hook context (and, re-exported, the hook names of :mod:`vlmfast.models.hook_names`).

A run asks for some hook points to be cached and attaches interventions to some;
``HookContext`` holds both, and every hook site in the model calls
``ctx.apply(name, x)`` only when ``name in ctx.active`` so that unrequested hooks
cost nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from vlmfast.errors import ShapeError
from vlmfast.models.hook_names import (
    HookLayout,
    hook_layout,
    is_glob,
    layout_for,
    resolve_hooks,
)

if TYPE_CHECKING:
    from vlmfast.models.interventions import Intervention


class HookContext:
    """The hooks of one run: which names to cache and which interventions to apply.

    ``active`` is the set of names a hook site must visit; everything else runs the
    fast path. Cached tensors are the values after the interventions at that hook
    (what the rest of the forward actually sees).
    """

    def __init__(
        self,
        cache_names: Iterable[str] = (),
        interventions: Sequence[tuple[str, Intervention]] = (),
    ) -> None:
        self.cache_names = frozenset(cache_names)
        self.by_name: dict[str, list[Intervention]] = {}
        for name, iv in interventions:
            self.by_name.setdefault(name, []).append(iv)
        self.active = frozenset(self.cache_names | set(self.by_name))
        self.cache: dict[str, Tensor] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.active

    def apply(self, name: str, x: Tensor) -> Tensor:
        """Runs the interventions at ``name`` in order, then caches the result if asked."""
        for iv in self.by_name.get(name, ()):
            y = iv.apply(name, x)
            if not isinstance(y, torch.Tensor):
                raise ShapeError(
                    f"intervention {iv!r} at hook {name!r} returned {type(y).__name__}, "
                    "expected a Tensor"
                )
            if y.shape != x.shape:
                raise ShapeError(
                    f"intervention {iv!r} at hook {name!r} changed the shape from "
                    f"{tuple(x.shape)} to {tuple(y.shape)}"
                )
            x = y
        if name in self.cache_names:
            self.cache[name] = x
        return x

    def needs(self, name: str) -> bool:
        """Whether a hook site has anything to do at ``name``."""
        return name in self.active

    @staticmethod
    def for_names(
        hook_points: Sequence[str],
        cache: str | Iterable[str] | None,
        interventions: Sequence[Intervention] | None,
    ) -> HookContext | None:
        """Resolves cache patterns and intervention targets; ``None`` when nothing is hooked."""
        cache_names = resolve_hooks(cache, hook_points) if cache else []
        pairs: list[tuple[str, Intervention]] = []
        for iv in interventions or ():
            for name in iv.targets(hook_points):
                pairs.append((name, iv))
        if not cache_names and not pairs:
            return None
        return HookContext(cache_names, pairs)


__all__ = ["HookContext", "HookLayout", "hook_layout", "is_glob", "layout_for", "resolve_hooks"]
