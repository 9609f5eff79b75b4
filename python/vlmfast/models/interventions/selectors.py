"""Selectors of interventions: which rows, positions, heads and units an edit touches.

A selector is ``None`` (all), an int, a sequence of ints (the same for every row), a
bool mask, or ``PerRow(...)`` (a different choice per batch row).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from vlmfast.errors import InputError, ShapeError


class PerRow:
    """A per-row selector: row ``b`` of the batch uses ``choices[b]``.

    ``choices`` is a 1-D int tensor/list with one index per row (``-1``: nothing in that
    row), a list of lists of ints (ragged, several per row), or a bool tensor [B, n].
    """

    def __init__(self, choices: Tensor | Sequence[int] | Sequence[Sequence[int]]) -> None:
        self.choices = choices

    def __repr__(self) -> str:
        c = self.choices
        n = c.shape[0] if isinstance(c, Tensor) else len(c)
        return f"PerRow(<{n} rows>)"

    def mask(self, bsz: int, size: int, device: torch.device, what: str) -> Tensor:
        """Bool mask [B, size]."""
        c = self.choices
        if isinstance(c, Tensor) and c.dtype == torch.bool:
            if tuple(c.shape) != (bsz, size):
                raise ShapeError(
                    f"PerRow bool mask for {what} must be [{bsz}, {size}], got {tuple(c.shape)}"
                )
            return c.to(device)
        if isinstance(c, Tensor) or (len(c) > 0 and not isinstance(c[0], Sequence | Tensor)):
            idx = torch.as_tensor(c, dtype=torch.long, device=device).reshape(-1)
            if idx.shape[0] != bsz:
                raise ShapeError(
                    f"PerRow for {what} has {idx.shape[0]} entries, the batch has {bsz} rows"
                )
            if idx.numel() and (int(idx.max()) >= size or int(idx.min()) < -1):
                raise InputError(f"PerRow index for {what} out of range [-1, {size})")
            out = torch.zeros(bsz, size + 1, dtype=torch.bool, device=device)
            out[torch.arange(bsz, device=device), torch.where(idx < 0, size, idx)] = True
            return out[:, :size]
        if len(c) != bsz:
            raise ShapeError(f"PerRow for {what} has {len(c)} entries, the batch has {bsz} rows")
        out = torch.zeros(bsz, size, dtype=torch.bool)
        for b, row in enumerate(c):
            for i in torch.as_tensor(row, dtype=torch.long).reshape(-1).tolist():
                if not 0 <= int(i) < size:
                    raise InputError(f"PerRow index {int(i)} for {what} out of range [0, {size})")
                out[b, int(i)] = True
        return out.to(device)


Selector = int | Sequence[int] | Tensor | PerRow | None


def axis_mask(sel: Selector, bsz: int, size: int, device: torch.device, what: str) -> Tensor | None:
    """Bool mask [B or 1, size] for one selector; ``None`` selects everything."""
    if sel is None:
        return None
    if isinstance(sel, PerRow):
        return sel.mask(bsz, size, device, what)
    if isinstance(sel, Tensor) and sel.dtype == torch.bool:
        if sel.dim() != 1 or sel.shape[0] != size:
            raise ShapeError(f"bool selector for {what} must be [{size}], got {tuple(sel.shape)}")
        return sel.to(device).view(1, size)
    idx = torch.as_tensor([sel] if isinstance(sel, int) else sel, dtype=torch.long).reshape(-1)
    if idx.numel() and (int(idx.max()) >= size or int(idx.min()) < -size):
        raise InputError(f"{what} index out of range for size {size}: {idx.tolist()}")
    out = torch.zeros(size, dtype=torch.bool)
    out[idx] = True
    return out.to(device).view(1, size)


def place(mask: Tensor, dim: int, ndim: int) -> Tensor:
    """Reshapes a [B', n] axis mask so that n sits at ``dim`` of an ``ndim`` tensor."""
    shape = [1] * ndim
    shape[0] = mask.shape[0]
    shape[dim] = mask.shape[1]
    return mask.view(shape)
