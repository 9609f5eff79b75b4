"""One tolerance for tests that compare two numeric paths.

Torch picks AVX2 or AVX-512 kernels by CPU (and oneDNN / MKL pick blockings by size),
so two mathematically equal paths sum in different orders and differ by rounding.
A bare ``atol=1e-5, rtol=0`` near float32 rounding passes on one CPU and fails on
another. The bound here follows the dtype and the magnitude of what is compared:

    |actual - expected| <= rtol * |expected| + ulps * eps(dtype) * scale

- ``rtol`` defaults to ``ulps * eps`` (a few hundred float32 ulps, ~1e-5 relative);
- ``scale`` is the magnitude the compared values were computed from. It defaults to the
  reference's largest magnitude, and never less than 1: the quantities compared here
  (activations, logits, their differences) come from O(1) inputs, and a logit
  *difference* of 0.01 carries the rounding of the O(1) logits it came from. Pass it
  explicitly when the values come from larger quantities, e.g. a *ratio*: a recovery
  ``(m - m0) / (m1 - m0)`` inherits the rounding of ``m`` amplified by
  ``1 / |m1 - m0|`` (use :func:`ratio_scale`).

A real bug (a wrong head patched, a dropped mask) moves values by O(1) of their own
magnitude, far beyond these bounds: the helper's own tests check that it still fails.
"""

from __future__ import annotations

from typing import Any

import torch

# float32 ulps allowed per unit of magnitude; a matmul of width d accumulates ~sqrt(d) ulps.
DEFAULT_ULPS = {
    torch.float64: 64.0,
    torch.float32: 128.0,
    torch.bfloat16: 4.0,
    torch.float16: 8.0,
}


# Parity with another implementation (open_clip, transformers): ~1e-4 per unit of
# magnitude in float32, the bound the README states for loaded weights.
PARITY_ULPS = 1e-4 / torch.finfo(torch.float32).eps


def _as_tensor(x: Any) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    return torch.as_tensor(x)


def tolerance(
    expected: Any,
    *,
    dtype: torch.dtype | None = None,
    scale: float | torch.Tensor | None = None,
    ulps: float | None = None,
) -> tuple[float, float]:
    """``(rtol, atol)`` for comparing against ``expected`` at ``dtype`` (default: its own)."""
    ref = _as_tensor(expected)
    dtype = dtype or (ref.dtype if ref.is_floating_point() else torch.float32)
    eps = torch.finfo(dtype).eps
    n_ulps = DEFAULT_ULPS.get(dtype, 128.0) if ulps is None else ulps
    if scale is not None:
        magnitude = float(_as_tensor(scale).detach().abs().max())
    elif ref.numel():
        magnitude = max(float(ref.detach().abs().max()), 1.0)
    else:
        magnitude = 1.0
    return n_ulps * eps, n_ulps * eps * max(magnitude, torch.finfo(dtype).tiny)


def ratio_scale(numerator_terms: Any, denominator: Any) -> float:
    """The magnitude a ratio inherits: ``max|terms| / min|denominator|``."""
    num = float(_as_tensor(numerator_terms).detach().abs().max())
    den = float(_as_tensor(denominator).detach().abs().min())
    if den == 0.0:
        raise ValueError("ratio_scale: the denominator has a zero; the ratio is undefined")
    return num / den


def assert_close(
    actual: Any,
    expected: Any,
    *,
    scale: float | torch.Tensor | None = None,
    ulps: float | None = None,
    dtype: torch.dtype | None = None,
    msg: str | None = None,
) -> None:
    """``torch.testing.assert_close`` with :func:`tolerance`'s bound (shapes and dtypes checked).

    ``dtype`` names the precision the paths computed in, when the compared tensors were
    cast up afterwards (e.g. a bfloat16 kernel compared in float32).
    """
    act, ref = _as_tensor(actual), _as_tensor(expected)
    rtol, atol = tolerance(ref, dtype=dtype, scale=scale, ulps=ulps)
    if msg is None:
        torch.testing.assert_close(act, ref, rtol=rtol, atol=atol)
    else:
        torch.testing.assert_close(act, ref, rtol=rtol, atol=atol, msg=msg)
