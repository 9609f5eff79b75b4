"""Where replacement values come from: a tensor, a cache dict or a ``RunOutput``,
looked up by hook name, with their rows picked and their shape checked."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from vlmfast.errors import InputError, ShapeError


def lookup(source: Any, name: str, what: str) -> Tensor:
    """A tensor for hook ``name`` from a tensor, a cache dict or a ``RunOutput``."""
    if isinstance(source, Tensor):
        return source
    cache = getattr(source, "cache", source)
    if isinstance(cache, Mapping):
        if name not in cache:
            raise InputError(
                f"{what} has no value for hook {name!r}: cache it in the source run "
                f"(pair.run(..., cache=[{name!r}]))"
            )
        value = cache[name]
        if not isinstance(value, Tensor):
            raise InputError(f"{what}[{name!r}] is not a tensor")
        return value
    raise InputError(
        f"{what} must be a Tensor, a cache dict or a RunOutput, got {type(source).__name__}"
    )


def rows_of(
    src: Tensor, source_rows: Tensor | Sequence[int] | None, name: str, what: str
) -> Tensor:
    if source_rows is None:
        return src
    idx = torch.as_tensor(source_rows, dtype=torch.long, device=src.device).reshape(-1)
    if idx.numel() and (int(idx.max()) >= src.shape[0] or int(idx.min()) < -src.shape[0]):
        raise InputError(
            f"{what} source_rows for hook {name!r} out of range for {src.shape[0]} source rows"
        )
    return src[idx]


def check_like(new: Tensor, x: Tensor, name: str, what: str) -> Tensor:
    """``new`` must have x's shape, or x's shape with a batch of 1 (broadcast to all rows)."""
    if new.shape != x.shape and not (
        new.dim() == x.dim() and new.shape[0] == 1 and new.shape[1:] == x.shape[1:]
    ):
        raise ShapeError(
            f"{what} for hook {name!r} has shape {tuple(new.shape)}, the hook has {tuple(x.shape)}"
        )
    return new.to(device=x.device, dtype=x.dtype)
