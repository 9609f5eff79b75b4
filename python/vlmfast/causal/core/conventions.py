"""Conventions shared by every causal tool (tracing, attribution, direct effects).

One place, so that tracing and attribution agree on signs, normalisation and the
preconditions they check:

* **Metric**: the pair's real score, resolved by ``vlmfast.causal.core.metrics.resolve_metric``
  (``"score"`` = mean matched ``scale*cos (+ bias)``, ``"logit_diff"``, ``"alignment"``,
  or a callable on ``[..., n_img, n_txt]`` similarities). ``check_metric_output`` verifies
  a metric returned one number per variant.
* **Recovery** (denoising): ``(m(restored) - m(corrupt)) / (m(clean) - m(corrupt))``;
  0 = nothing restored, 1 = fully restored. A denominator ``|m(clean) - m(corrupt)|``
  below ``tol`` raises ``InputError`` naming both values (never a table of NaN / inf).
* **Eval mode**: ``pair.training`` true is an error (dropout would make clean and
  corrupt differ for identical inputs, TransformerLens #1787).
* **Direction**: ``"denoising"`` (default) takes the base run at the corrupt inputs and
  patched values from the clean ones; ``"noising"`` the other way round.
* **Paired inputs**: clean and corrupt inputs of different lengths (batch or sequence)
  are an error (TransformerLens #1742).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from vlmfast.causal.core.vocabulary import DIRECTIONS, TOWERS  # re-exported
from vlmfast.errors import InputError, ShapeError

RECOVERY_TOL = 1e-6
"""Default smallest ``|m(clean) - m(corrupt)|`` a recovery may divide by."""


def check_eval_mode(pair: Any, what: str = "this causal tool") -> None:
    """InputError when ``pair.training`` is true (call ``pair.eval()`` first)."""
    if bool(getattr(pair, "training", False)):
        raise InputError(
            f"{what} needs the pair in eval mode (pair.training is True): call pair.eval() "
            "first, or dropout makes clean and corrupted runs differ for identical inputs"
        )


def check_tower(tower: str, what: str = "tower") -> str:
    """``tower`` if it is ``"image"`` or ``"text"``, else an InputError naming ``what``."""
    if tower not in TOWERS:
        raise InputError(f"{what} must be one of {list(TOWERS)}, got {tower!r}")
    return tower


def check_choice(value: Any, allowed: Sequence[Any], what: str) -> Any:
    """``value`` if it is in ``allowed``, else an InputError naming ``what`` and the choices."""
    if value not in allowed:
        raise InputError(f"{what} must be one of {list(allowed)}, got {value!r}")
    return value


def check_paired(clean: torch.Tensor, corrupt: torch.Tensor, what: str = "inputs") -> None:
    """Clean and corrupted inputs must have the same shape (same batch and sequence length)."""
    if tuple(clean.shape) != tuple(corrupt.shape):
        raise ShapeError(
            f"clean and corrupted {what} must have the same shape (paired by index and "
            f"position); got clean {tuple(clean.shape)} and corrupted {tuple(corrupt.shape)}"
        )


def check_metric_output(value: torch.Tensor, n_variants: int | None, what: str = "metric") -> None:
    """A metric must return one number per variant: shape ``[n_variants]`` (``[]`` if None)."""
    want: tuple[int, ...] = () if n_variants is None else (n_variants,)
    if not isinstance(value, torch.Tensor) or tuple(value.shape) != want:
        got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        raise ShapeError(
            f"{what} must map similarities [..., n_img, n_txt] to one number per variant "
            f"(shape {want}), got {got}"
        )


def recovery_denominator(clean: float, corrupt: float, tol: float = RECOVERY_TOL) -> float:
    """``clean - corrupt``, or InputError naming both values when it is below ``tol``."""
    denom = float(clean) - float(corrupt)
    if not abs(denom) > tol:  # also catches NaN
        raise InputError(
            f"recovery is undefined: the metric barely changes under the corruption "
            f"(clean {float(clean):.6g}, corrupt {float(corrupt):.6g}, |difference| "
            f"{abs(denom):.3g} <= tol {tol:g}); use a stronger corruption or another metric"
        )
    return denom


def recovery(
    restored: torch.Tensor | float, clean: float, corrupt: float, tol: float = RECOVERY_TOL
) -> torch.Tensor:
    """``(restored - corrupt) / (clean - corrupt)`` elementwise (denoising convention).

    0 means the restoration recovered nothing, 1 that it recovered the clean metric.
    """
    denom = recovery_denominator(clean, corrupt, tol)
    value = torch.as_tensor(restored, dtype=torch.float64)
    return ((value - float(corrupt)) / denom).to(torch.float32)


__all__ = [
    "DIRECTIONS",
    "RECOVERY_TOL",
    "TOWERS",
    "check_choice",
    "check_eval_mode",
    "check_metric_output",
    "check_paired",
    "check_tower",
    "recovery",
    "recovery_denominator",
]
