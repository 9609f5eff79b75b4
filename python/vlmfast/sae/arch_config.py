"""Validation of the architecture-specific fields of :class:`~vlmfast.sae.config.SAEConfig`.

``topk`` and ``batchtopk`` need nothing beyond ``k``; ``matryoshka`` needs its nested
group sizes (filled in when left out); ``jumprelu`` its threshold initialisation, kernel
bandwidth and L0 weight. Kept apart from ``config.py`` so that file stays one concept.
"""

from __future__ import annotations

import math
from typing import Any

from vlmfast.errors import InputError

THRESHOLD_ARCHS = ("batchtopk", "matryoshka", "jumprelu")
"""Architectures whose inference encode is a threshold (saved as SAELens ``jumprelu``)."""
BATCH_ARCHS = ("batchtopk", "matryoshka")
"""Architectures trained with a top-k over the whole batch (one global threshold)."""


def default_groups(n_latents: int) -> list[int]:
    """Matryoshka group sizes whose prefixes end at n/8, n/4, n/2 and n (empty ones dropped)."""
    ends = sorted({max(1, n_latents // 8), max(1, n_latents // 4), max(1, n_latents // 2)})
    ends = [e for e in ends if e < n_latents] + [n_latents]
    return [b - a for a, b in zip([0, *ends[:-1]], ends)]


def _positive(cfg: Any, name: str, allow_none: bool = False, allow_zero: bool = False) -> None:
    value = getattr(cfg, name)
    if value is None and allow_none:
        return
    ok = isinstance(value, (int, float)) and math.isfinite(value)
    ok = ok and (value >= 0 if allow_zero else value > 0)
    if not ok:
        what = "a number >= 0" if allow_zero else "a positive number"
        raise InputError(f"SAEConfig.{name} must be {what}, got {value!r}")


def _check_groups(cfg: Any) -> None:
    if cfg.groups is None:
        if cfg.arch == "matryoshka":
            cfg.groups = default_groups(cfg.n_latents)
        return
    if cfg.arch != "matryoshka":
        raise InputError(
            f"SAEConfig.groups is for arch='matryoshka' only (arch={cfg.arch!r}); remove it"
        )
    groups = list(cfg.groups)
    if not groups or not all(isinstance(g, int) and g >= 1 for g in groups):
        raise InputError(f"SAEConfig.groups must be positive integers, got {cfg.groups!r}")
    if sum(groups) != cfg.n_latents:
        raise InputError(
            f"SAEConfig.groups {groups} sum to {sum(groups)}, not n_latents={cfg.n_latents}:"
            " the nested groups must cover the dictionary exactly"
        )
    cfg.groups = groups


def check_arch_fields(cfg: Any) -> None:
    """Validates (and for matryoshka completes) the arch fields of an SAEConfig in place.

    Raises InputError naming the bad key.
    """
    _check_groups(cfg)
    _positive(cfg, "threshold_init", allow_none=True)
    _positive(cfg, "bandwidth", allow_none=True)
    _positive(cfg, "l0_coef", allow_zero=True)
    _positive(cfg, "l0_coef_adapt", allow_zero=True)
    if not 0.0 < cfg.threshold_ema <= 1.0:
        raise InputError(f"SAEConfig.threshold_ema must be in (0, 1], got {cfg.threshold_ema!r}")
