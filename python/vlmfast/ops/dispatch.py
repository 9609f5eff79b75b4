"""Per-call choice between a Triton kernel and its torch reference.

A call uses the kernel when the tensors live on a CUDA device, Triton imports,
and ``VLMFAST_DISABLE_TRITON`` is not set. Otherwise it uses the reference;
with ``VLMFAST_STRICT=1`` a fallback on a CUDA tensor (the case where the user
expected the kernel) raises :class:`~vlmfast.errors.StrictModeError` instead.
CPU tensors always take the reference unless a caller passes ``backend="triton"``
explicitly (the parity tests do, under ``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import functools
import os

import torch

from vlmfast.errors import InputError, StrictModeError


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


@functools.lru_cache(maxsize=1)
def triton_importable() -> bool:
    """Whether ``triton`` imports (cached: importing it twice is wasted work)."""
    try:
        import triton
        import triton.language  # noqa: F401
    except Exception:  # pragma: no cover - depends on the platform
        return False
    return True


def interpret_mode() -> bool:
    """``TRITON_INTERPRET=1``: kernels run in Triton's CPU interpreter."""
    return _flag("TRITON_INTERPRET")


def use_triton(tensor: torch.Tensor, op: str, backend: str = "auto") -> bool:
    """Whether ``op`` should run its Triton kernel for ``tensor``.

    ``backend`` is ``"auto"`` (kernel on CUDA tensors), ``"triton"`` (kernel or an
    error) or ``"reference"``. Raises StrictModeError under ``VLMFAST_STRICT=1`` when
    a CUDA tensor would fall back to the reference (Triton missing or disabled).
    """
    if backend == "reference":
        return False
    if backend not in ("auto", "triton"):
        raise InputError(f"backend must be 'auto', 'triton' or 'reference', got {backend!r}")
    on_cuda = tensor.is_cuda
    if backend == "triton":
        if not triton_importable():
            raise InputError(f"{op}: backend='triton' but triton is not importable")
        if not on_cuda and not interpret_mode():
            raise InputError(f"{op}: backend='triton' on a CPU tensor needs TRITON_INTERPRET=1")
        return True
    if not on_cuda:
        return False
    if _flag("VLMFAST_DISABLE_TRITON"):
        reason = "VLMFAST_DISABLE_TRITON is set"
    elif not triton_importable():
        reason = "triton is not importable"
    else:
        return True
    if on_cuda and _flag("VLMFAST_STRICT"):
        raise StrictModeError(f"{op}: Triton kernel unavailable ({reason}) and VLMFAST_STRICT=1")
    return False
