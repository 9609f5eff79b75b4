"""Hook names, glob resolution and the per-run hook context.

A hook point is a named tensor in the forward pass (``image.blocks.3.attn.z``).
A run asks for some of them to be cached and attaches interventions to some;
``HookContext`` holds both, and every hook site in the model calls
``ctx.apply(name, x)`` only when ``name in ctx.active`` so that unrequested hooks
cost nothing.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from vlmfast.errors import HookNameError, ShapeError

if TYPE_CHECKING:
    from vlmfast.models.interventions import Intervention

_GLOB_CHARS = frozenset("*?[")


def is_glob(pattern: str) -> bool:
    """Whether a hook pattern contains glob characters (``*``, ``?``, ``[``)."""
    return any(c in _GLOB_CHARS for c in pattern)


def resolve_hooks(patterns: str | Iterable[str], hook_points: Sequence[str]) -> list[str]:
    """Expands names and globs against ``hook_points``, keeping model order, no duplicates.

    An unknown name, or a glob that matches nothing, raises ``HookNameError`` with the
    closest valid names.
    """
    if isinstance(patterns, str):
        patterns = [patterns]
    known = set(hook_points)
    wanted: set[str] = set()
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise HookNameError(f"hook names must be strings, got {pattern!r}")
        if is_glob(pattern):
            matched = [p for p in hook_points if fnmatch.fnmatchcase(p, pattern)]
            if not matched:
                raise HookNameError(
                    f"hook pattern {pattern!r} matches no hook point"
                    f"{_suggestions(pattern.replace('*', '0'), hook_points)}"
                )
            wanted.update(matched)
        elif pattern in known:
            wanted.add(pattern)
        else:
            raise HookNameError(
                f"unknown hook point {pattern!r}{_suggestions(pattern, hook_points)}"
            )
    return [p for p in hook_points if p in wanted]


def _suggestions(name: str, hook_points: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, hook_points, n=5, cutoff=0.5)
    if close:
        return "; did you mean: " + ", ".join(close) + "? (pair.hook_points() lists them all)"
    return "; pair.hook_points() lists the valid names"


@dataclass(frozen=True)
class HookLayout:
    """Which tensor dimension holds positions, heads and units for one kind of hook.

    ``None`` means the hook has no such dimension. The batch is always dimension 0.
    """

    position: int | None
    head: int | None
    unit: int | None


_TOKEN = HookLayout(position=1, head=None, unit=2)
_PER_HEAD = HookLayout(position=1, head=2, unit=3)
_PATTERN = HookLayout(position=2, head=1, unit=3)  # [B, H, query, key]: unit = key position
_POOLED = HookLayout(position=None, head=None, unit=1)


def hook_layout(name: str) -> HookLayout:
    """The dimension layout of a hook, from its name."""
    last = name.rsplit(".", 1)[-1]
    if last in ("q", "k", "v", "z", "head_out"):
        return _PER_HEAD
    if last == "pattern":
        return _PATTERN
    if last in ("pooled", "embed"):
        return _POOLED
    if name.endswith("ln_final.scale") or name.endswith("ln_final"):
        # ln_final is token-level for pre_pool towers, [B, d] for post_pool; decided at run time
        return _TOKEN
    return _TOKEN


def layout_for(name: str, x: Tensor) -> HookLayout:
    """``hook_layout`` corrected for a 2-D tensor (post-pool LayerNorms are [B, d])."""
    layout = hook_layout(name)
    if x.dim() == 2 and layout is _TOKEN:
        return _POOLED
    return layout


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
