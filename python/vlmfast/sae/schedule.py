"""How long to train an SAE by default, and whether a finished run looks converged.

The old default (one epoch or 200 rows per latent) stopped a 120,000-row store after 29
steps of 4,096 rows (FVU 0.66, no planted atom recovered); 5,859 steps of 1,024 rows
recovered all of them. What an SAE needs is optimizer *steps*, so the default is a step
count: at least :data:`MIN_STEPS` steps, and at least one epoch. A small store gets a
smaller batch (more steps per epoch) and several epochs; a store of more than
``MIN_STEPS`` batches trains for one epoch as before.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from vlmfast.errors import InputError

MIN_STEPS = 5000
"""Fewest optimizer steps a default run takes."""
DEFAULT_BATCH = 4096
"""Rows per step for a store of at least ``64 * DEFAULT_BATCH`` rows."""
MIN_BATCH = 256
"""Smallest default batch (tiny stores)."""
ROWS_PER_LATENT = 200
"""A default run sees at least this many rows per latent."""
FVU_WARN = 0.1
"""A final FVU above this gets a warning."""
FALLING_TOLERANCE = 0.05
"""FVU still falling: the last tenth of the logged values is this much (relative) below
the tenth before it ..."""
FALLING_MIN_DROP = 0.005
"""... and at least this much in absolute FVU (0.0065 -> 0.0061 is converged enough)."""


@dataclass(frozen=True)
class TrainingLength:
    """A run's batch size and length."""

    batch_size: int
    """Rows per optimizer step."""
    steps: int
    """Optimizer steps."""
    epochs: float
    """Passes over the store's rows (``steps * batch_size / rows``)."""

    @property
    def tokens(self) -> int:
        return self.steps * self.batch_size


def default_batch_size(n_rows: int) -> int:
    """4,096 rows, or for a small store the largest power of two <= rows / 64 (>= 256)."""
    if n_rows < 1:
        raise InputError(f"the hook has no rows (n_rows={n_rows}); nothing to train on")
    fit = 1 << (max(1, n_rows // 64).bit_length() - 1)
    return int(max(MIN_BATCH, min(DEFAULT_BATCH, fit)))


def training_length(
    n_rows: int,
    n_latents: int,
    *,
    batch_size: int | None = None,
    tokens: int | None = None,
    min_steps: int = MIN_STEPS,
) -> TrainingLength:
    """The default length: ``max(one epoch, min_steps steps, 200 rows per latent)``.

    ``batch_size`` / ``tokens`` given by the user win (``tokens`` rows in all).
    """
    batch = default_batch_size(n_rows) if batch_size is None else int(batch_size)
    if batch < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    if tokens is not None:
        if tokens < 1:
            raise InputError(f"tokens must be >= 1, got {tokens}")
        steps = max(1, int(tokens) // batch)
    else:
        want = max(n_rows, min_steps * batch, ROWS_PER_LATENT * n_latents)
        steps = max(1, -(-want // batch))
    return TrainingLength(batch, steps, steps * batch / max(n_rows, 1))


def convergence_warnings(fvu: Sequence[float], *, threshold: float = FVU_WARN) -> list[str]:
    """Warnings about a finished run from its logged FVU values (in step order).

    Two checks: the final FVU is above ``threshold``; the FVU was still falling at the
    end (mean of the last tenth of the logs more than 5%, and 0.005, below the tenth
    before it).
    """
    values = [float(v) for v in fvu if math.isfinite(float(v))]
    out: list[str] = []
    if not values:
        return out
    if values[-1] > threshold:
        out.append(
            f"final FVU {values[-1]:.3f} is above {threshold:g}: the SAE reconstructs its "
            "inputs poorly; train longer (--tokens), or use more latents / a larger k"
        )
    tenth = len(values) // 10
    if tenth >= 1:
        last = sum(values[-tenth:]) / tenth
        before = sum(values[-2 * tenth : -tenth]) / tenth
        drop = before - last
        if before > 0 and drop / before > FALLING_TOLERANCE and drop > FALLING_MIN_DROP:
            out.append(
                f"FVU was still falling at the end ({before:.4f} -> {last:.4f} over the last "
                "fifth of the run): the SAE has not converged; train longer (--tokens)"
            )
    return out
