"""The options of ``vf.causal.patch_sweep``, one dataclass (keyword calls build it)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vlmfast.causal.core.limits import DEFAULT_MAX_ROWS
from vlmfast.causal.core.options import with_options


@dataclass(frozen=True)
class PatchConfig:
    """Everything ``patch_sweep`` can be told besides its inputs and metric.

    ``patch_sweep(pair, px, tok, src, config=PatchConfig(component="neurons"))`` and
    ``patch_sweep(pair, px, tok, src, component="neurons")`` are the same call;
    keywords given with a config replace its fields.
    """

    component: str = "heads"
    """``"heads"``, ``"neurons"`` or ``"positions"``."""
    tower: str = "image"
    """``"image"`` or ``"text"``: the tower whose components are patched."""
    point: str | None = None
    """Hook point in each block (default ``attn.z`` / ``mlp.post`` / ``resid_pre``)."""
    layers: Sequence[int] | None = None
    """Layers patched (default all)."""
    indices: Sequence[int] | None = None
    """Component indices patched in each layer (default all)."""
    normalize: str | None = None
    """None, ``"delta"`` (minus the base metric) or ``"recovery"`` ((patched - base) /
    (source - base))."""
    max_rows: int = DEFAULT_MAX_ROWS
    """The most batch rows per batched forward (components x base rows)."""
    method: str = "batched"
    """``"batched"`` (prefix reuse, stacked patches) or ``"serial"`` (one full forward per
    component, the TransformerLens way; the reference)."""

    @classmethod
    def build(cls, config: PatchConfig | None, options: dict[str, Any]) -> PatchConfig:
        """Returns ``config`` (default: the defaults) with ``options`` replacing its fields.

        Raises:
            TypeError: an option that is not a field.
        """
        return with_options(cls, config, options, "patch_sweep")


__all__ = ["PatchConfig"]
