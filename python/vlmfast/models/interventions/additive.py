"""Additive edits: steering along a direction and Gaussian noise."""

from __future__ import annotations

import torch
from torch import Tensor

from vlmfast.errors import InputError, ShapeError
from vlmfast.models.interventions.base import Intervention
from vlmfast.models.interventions.selectors import Selector


class Steer(Intervention):
    """Adds ``alpha * direction`` to the selected elements.

    ``direction`` broadcasts against the hook's trailing dimensions (e.g. [d] for a
    residual hook, [d_head] or [H, d_head] for ``attn.z``); ``alpha`` is a float or a
    tensor [B] (one strength per row, for a sweep in one forward).
    """

    def __init__(
        self,
        hook: str,
        direction: Tensor,
        alpha: float | Tensor = 1.0,
        *,
        positions: Selector = None,
        rows: Selector = None,
        heads: Selector = None,
        neurons: Selector = None,
    ) -> None:
        super().__init__(hook, rows=rows, positions=positions, heads=heads, neurons=neurons)
        self.direction = torch.as_tensor(direction)
        self.alpha = alpha

    def apply(self, name: str, x: Tensor) -> Tensor:
        """Returns hook ``name``'s value ``x`` plus ``alpha * direction`` on the selected elements.

        Raises:
            ShapeError: ``direction`` does not broadcast to the hook, or a tensor
                ``alpha`` is not ``[B]``.
        """
        direction = self.direction.to(device=x.device, dtype=x.dtype)
        try:
            ok = torch.broadcast_shapes(direction.shape, x.shape) == x.shape
        except RuntimeError:
            ok = False
        if not ok:
            raise ShapeError(
                f"Steer direction for hook {name!r} has shape {tuple(direction.shape)}, not "
                f"broadcastable to the hook's {tuple(x.shape)}"
            )
        alpha = self.alpha
        if isinstance(alpha, Tensor) and alpha.dim() > 0:
            if alpha.shape[0] != x.shape[0] or alpha.dim() != 1:
                raise ShapeError(
                    f"Steer alpha for hook {name!r} must be a scalar or [B={x.shape[0]}], "
                    f"got {tuple(alpha.shape)}"
                )
            alpha = alpha.to(device=x.device, dtype=x.dtype).view([-1] + [1] * (x.dim() - 1))
        return self._blend(name, x, x + alpha * direction)


class Noise(Intervention):
    """Adds Gaussian noise (ROME-style corruption) to the selected elements.

    ``std`` is a float, or ``"3x_embed_std"``: three times the standard deviation of the
    hook's value over the whole batch (ROME's 3 sigma; apply it at ``*.embed_tokens`` or
    ``*.token_embed``). Noise comes from a ``torch.Generator`` seeded with ``seed`` (plus
    the hook's index when a glob matches several hooks), so runs are reproducible;
    ``same_noise_per_row=True`` draws one noise sample shared by all rows.

    Raises:
        InputError: (constructing) ``std`` is negative or an unknown string.
    """

    def __init__(
        self,
        hook: str,
        std: float | str = "3x_embed_std",
        *,
        seed: int = 0,
        positions: Selector = None,
        rows: Selector = None,
        same_noise_per_row: bool = False,
    ) -> None:
        super().__init__(hook, rows=rows, positions=positions)
        if isinstance(std, str) and std != "3x_embed_std":
            raise InputError(f"Noise std must be a float or '3x_embed_std', got {std!r}")
        if not isinstance(std, str) and float(std) < 0:
            raise InputError(f"Noise std must be >= 0, got {std!r}")
        self.std = std
        self.seed = seed
        self.same_noise_per_row = same_noise_per_row

    def __repr__(self) -> str:
        return f"Noise({self.hook!r}, std={self.std!r}, seed={self.seed})"

    def scale(self, x: Tensor) -> float:
        """Returns the noise standard deviation used for hook value ``x`` (in its units)."""
        if isinstance(self.std, str):
            return 3.0 * float(x.detach().float().std())
        return float(self.std)

    def apply(self, name: str, x: Tensor) -> Tensor:
        """Returns hook ``name``'s value ``x`` with seeded Gaussian noise added to the
        selected elements."""
        seed = self.seed + self._order.get(name, 0)
        gen = torch.Generator().manual_seed(seed)
        shape = (1, *x.shape[1:]) if self.same_noise_per_row else tuple(x.shape)
        noise = torch.randn(shape, generator=gen, dtype=torch.float32).to(
            device=x.device, dtype=x.dtype
        )
        return self._blend(name, x, x + self.scale(x) * noise)
