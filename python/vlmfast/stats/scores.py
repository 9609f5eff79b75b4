"""The result of a scoring run: per-(unit, concept) tables with their meaning."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from vlmfast.stats.significance import mann_whitney_pvalues, z_for_level


@dataclass
class UnitScores:
    """Concept statistics of ``n_units`` units (SAE features or neurons) over ``n_rows`` samples.

    Tables are ``[units, concepts]`` unless noted; optional ones are ``None``
    when not requested.
    """

    auroc: npt.NDArray[np.float64]
    """Exact Mann–Whitney AUROC (ties count ½); NaN where a concept has no positive or no negative."""
    n_pos: npt.NDArray[np.int64]
    """Positive rows per concept ``[concepts]``."""
    n_rows: int
    """Samples scored."""
    firing: npt.NDArray[np.int64]
    """Rows with activation > 0 per unit ``[units]``."""
    ties: npt.NDArray[np.float64]
    """``Σ(t³ − t)`` over each unit's tie groups ``[units]`` (for the null variance)."""
    se: npt.NDArray[np.float64] | None = None
    """DeLong standard error of the AUROC (a class of one contributes no variance)."""
    pos_firing: npt.NDArray[np.uint32] | None = None
    """Positives with activation > 0."""
    mean_pos: npt.NDArray[np.float32] | None = None
    """Mean activation over the concept's positives (zeros included)."""
    mean_neg: npt.NDArray[np.float32] | None = None
    """Mean activation over the concept's negatives (zeros included)."""
    precision: npt.NDArray[np.float32] | None = None
    """Fraction of positives among the unit's ``top_n`` largest stored activations
    (for sparse codes only nonzeros count); NaN if the unit stores none."""
    top_rows: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros((0, 0), np.int64))
    """Rows of the unit's largest activations ``[units, top_n]``, descending; -1 pads."""
    top_values: npt.NDArray[np.float32] = field(
        default_factory=lambda: np.zeros((0, 0), np.float32)
    )
    """Values of those activations ``[units, top_n]``; NaN pads."""

    @property
    def n_units(self) -> int:
        return int(self.auroc.shape[0])

    @property
    def n_concepts(self) -> int:
        return int(self.auroc.shape[1])

    @property
    def n_neg(self) -> npt.NDArray[np.int64]:
        """Negative rows per concept."""
        return self.n_rows - self.n_pos

    @property
    def firing_rate(self) -> npt.NDArray[np.float64]:
        """Fraction of rows where each unit is > 0 ``[units]``."""
        return self.firing / max(self.n_rows, 1)

    @property
    def empty_class(self) -> npt.NDArray[np.bool_]:
        """Concepts whose AUROC is undefined (NaN): no positive or no negative row."""
        return (self.n_pos == 0) | (self.n_pos == self.n_rows)

    def ci(self, level: float = 0.95) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """Returns the Wald interval ``(low, high)`` of ``auroc ± z·se`` from the DeLong SE,
        each ``[units, concepts]``, clipped to [0, 1].

        Raises:
            InputError: the scores were made without standard errors (``with_se=False``).
        """
        if self.se is None:
            from vlmfast.errors import InputError

            raise InputError("no standard errors: score with with_se=True")
        z = z_for_level(level)
        return np.clip(self.auroc - z * self.se, 0.0, 1.0), np.clip(
            self.auroc + z * self.se, 0.0, 1.0
        )

    def pvalues(self, alternative: str = "greater") -> npt.NDArray[np.float64]:
        """Returns the tie-corrected Mann–Whitney p-values ``[units, concepts]``, in [0, 1]
        (see ``significance``)."""
        return mann_whitney_pvalues(self.auroc, self.n_pos, self.n_rows, self.ties, alternative)

    @classmethod
    def from_native(cls, d: dict[str, Any]) -> UnitScores:
        """Returns the dict returned by the native ``score_*`` functions as :class:`UnitScores`."""
        return cls(
            auroc=d["auroc"],
            n_pos=d["n_pos"].astype(np.int64),
            n_rows=int(d["n_rows"]),
            firing=d["firing"].astype(np.int64),
            ties=d["ties"],
            se=d.get("se"),
            pos_firing=d.get("pos_firing"),
            mean_pos=d.get("mean_pos"),
            mean_neg=d.get("mean_neg"),
            precision=d.get("precision"),
            top_rows=d["top_rows"],
            top_values=d["top_values"],
        )
