"""Hook point names: glob resolution (with close-match suggestions) and each hook's
tensor layout (which dimension holds positions, heads, units).

A hook point is a named tensor in the forward pass (``image.blocks.3.attn.z``). This
module is the base the per-run context (:mod:`vlmfast.models.hooks`) and the
interventions (:mod:`vlmfast.models.interventions`) share.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from torch import Tensor

from vlmfast.errors import HookNameError

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
