"""Patching: selected elements take their values from a source run; LayerNorm
freezing is a patch of the ``.scale`` hooks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from vlmfast.models.hook_names import resolve_hooks
from vlmfast.models.interventions.base import Intervention
from vlmfast.models.interventions.selectors import Selector
from vlmfast.models.interventions.sources import check_like, lookup, rows_of


class Patch(Intervention):
    """Replaces selected elements with values from a source run (activation patching).

    ``source`` is a tensor shaped like the hook, a cache dict or a ``RunOutput`` (looked up
    by hook name). ``source_rows[b]`` is the source row patched into target row ``b``
    (default: the same row); combined with ``PerRow`` selectors, each row of one forward
    can patch a different component from a different source row. A source with one row
    is broadcast to all rows.
    """

    def __init__(
        self,
        hook: str,
        source: Any,
        *,
        heads: Selector = None,
        neurons: Selector = None,
        positions: Selector = None,
        rows: Selector = None,
        source_rows: Tensor | Sequence[int] | None = None,
    ) -> None:
        super().__init__(hook, rows=rows, positions=positions, heads=heads, neurons=neurons)
        self.source = source
        self.source_rows = source_rows

    def apply(self, name: str, x: Tensor) -> Tensor:
        """Returns hook ``name``'s value ``x`` with the selected elements taken from the
        source run.

        Raises:
            InputError: the source lacks the hook, or ``source_rows`` is bad.
            ShapeError: the source does not fit the hook.
        """
        src = rows_of(lookup(self.source, name, "Patch source"), self.source_rows, name, "Patch")
        return self._blend(name, x, check_like(src, x, name, "Patch source"))


class FreezeLayerNorm(Patch):
    """Freezes LayerNorm scales (per-token std) at their values in a clean run.

    The clean run must cache the ``.scale`` hooks (``FreezeLayerNorm.cache_patterns(norms)``
    gives the globs). ``norms``: ``"ln_final"`` (default: the final LayerNorm of each
    tower, what direct-effect decompositions need), ``"all"`` (every LayerNorm, which makes
    each tower linear in its residual stream given attention patterns), or globs of
    LayerNorm names such as ``"image.blocks.*.ln2"``.
    """

    def __init__(
        self,
        source: Any,
        norms: str | Sequence[str] = "ln_final",
        *,
        rows: Selector = None,
        source_rows: Tensor | Sequence[int] | None = None,
    ) -> None:
        patterns = self.cache_patterns(norms)
        super().__init__(patterns[0], source, rows=rows, source_rows=source_rows)
        self.patterns = patterns

    @staticmethod
    def cache_patterns(norms: str | Sequence[str] = "ln_final") -> list[str]:
        """Returns the globs of the ``.scale`` hooks a clean run must cache for these ``norms``."""
        items = [norms] if isinstance(norms, str) else list(norms)
        out: list[str] = []
        for item in items:
            if item == "ln_final":
                out.append("*.ln_final.scale")
            elif item == "all":
                out.append("*.scale")
            else:
                out.append(item if item.endswith(".scale") else f"{item}.scale")
        return out

    def __repr__(self) -> str:
        return f"FreezeLayerNorm({self.patterns!r})"

    def targets(self, hook_points: Sequence[str]) -> list[str]:
        """Returns the LayerNorm ``.scale`` hooks among ``hook_points`` this freezes.

        Raises:
            HookNameError: a pattern matches no hook.
        """
        names = resolve_hooks(self.patterns, hook_points)
        self._order = {n: i for i, n in enumerate(names)}
        return names
