"""The options of ``vf.causal.trace``, one dataclass (keyword calls build it)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from vlmfast.causal.core.limits import DEFAULT_MAX_ROWS
from vlmfast.causal.core.metrics import Metric
from vlmfast.causal.core.options import with_options


@dataclass(frozen=True)
class TraceConfig:
    """Everything ``vf.causal.trace`` can be told, with its defaults.

    ``trace(pair, px, tok, "image", config=TraceConfig(kinds=("resid",), null=100))`` and
    ``trace(pair, px, tok, "image", kinds=("resid",), null=100)`` are the same call;
    keywords given with a config replace its fields.
    """

    noise: str | float = "zero"
    """``"zero"``, ``"3x"`` (ROME's 3 std) or a float std (ignored with ``corrupted``)."""
    samples: int = 10
    """Noise draws, shared by every restoration (ignored for ``"zero"`` and ``corrupted``)."""
    seed: int = 0
    """Seeds the noise and the null."""
    positions: Sequence[int] | Tensor | None = None
    """Corrupted positions shared by every row, or a bool Tensor [B, T] per row; default
    every patch / every token strictly between SOT and EOT."""
    kinds: Sequence[str] = ("resid", "attn_out", "mlp_out")
    """Any of ``"resid"``, ``"attn_out"``, ``"mlp_out"``, ``"heads"``."""
    window: int = 1
    """Layers restored together for ``attn_out`` / ``mlp_out`` (ROME: 10)."""
    metric: str | Metric = "score"
    """``"score"``, ``"logit_diff"``, ``"alignment"`` or a callable on ``[..., n_img,
    n_txt]`` similarities returning ``[...]``."""
    layers: Sequence[int] | None = None
    """The layers traced (default all)."""
    corrupted: Any = None
    """Inputs of the corrupted run (same shape as the clean ones) instead of noise."""
    null: int = 0
    """K random restorations per kind and layer (0: no null)."""
    null_count: int = 1
    """Units restored by each null draw (1: the count every cell restores)."""
    null_level: float = 0.95
    """Central interval of the null reported, in (0, 1)."""
    method: str = "batched"
    """``"batched"`` (prefix reuse) or ``"serial"`` (ROME's loop, the reference)."""
    max_rows: int = DEFAULT_MAX_ROWS
    """The most batch rows per batched forward (restorations x samples x rows)."""
    progress: Callable[[int], None] | None = None
    """Called with the number of restorations done after each forward."""

    @classmethod
    def build(cls, config: TraceConfig | None, options: dict[str, Any]) -> TraceConfig:
        """Returns ``config`` (default: the defaults) with ``options`` replacing its fields.

        Raises:
            TypeError: an option that is not a field.
        """
        return with_options(cls, config, options, "trace")


__all__ = ["TraceConfig"]
