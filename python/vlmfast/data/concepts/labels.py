"""``ConceptLabels``: a boolean concept matrix with its concept names and kinds."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from vlmfast.errors import InputError, ShapeError


@dataclass
class ConceptLabels:
    """Which concepts each sample has: the format stored with activations (``labels/concepts``)."""

    matrix: np.ndarray
    """bool [samples, C]."""
    names: list[str]
    """Concept name per column (unique)."""
    kinds: list[str]
    """Concept kind per column: ``object``, ``color``, ``size``, ``material``, ``relation``
    (unordered: on an image, two objects in different columns / rows), ``bound relation``
    (which object is where: ``red left of blue``), ..."""

    def __post_init__(self) -> None:
        self.matrix = np.asarray(self.matrix, dtype=bool)
        if self.matrix.ndim != 2:
            raise ShapeError(
                f"ConceptLabels.matrix must be 2-D [samples, C], got shape {self.matrix.shape}"
            )
        c = self.matrix.shape[1]
        if len(self.names) != c or len(self.kinds) != c:
            raise ShapeError(
                f"ConceptLabels: matrix has {c} columns but {len(self.names)} names and {len(self.kinds)} kinds"
            )
        if len(set(self.names)) != len(self.names):
            raise InputError("ConceptLabels: concept names must be unique")

    @property
    def n_samples(self) -> int:
        return int(self.matrix.shape[0])

    def column(self, name: str) -> np.ndarray:
        """The bool column of one concept."""
        try:
            return self.matrix[:, self.names.index(name)]
        except ValueError:
            raise InputError(f"unknown concept {name!r}") from None

    def select(self, kinds: Iterable[str] | None = None, min_count: int = 0) -> ConceptLabels:
        """Only the columns of ``kinds`` with at least ``min_count`` positives."""
        wanted = set(kinds) if kinds is not None else None
        counts = self.matrix.sum(axis=0)
        keep = [
            i
            for i, k in enumerate(self.kinds)
            if (wanted is None or k in wanted) and counts[i] >= min_count
        ]
        return ConceptLabels(
            self.matrix[:, keep], [self.names[i] for i in keep], [self.kinds[i] for i in keep]
        )

    def counts(self) -> dict[str, int]:
        """Positives per concept."""
        return {n: int(c) for n, c in zip(self.names, self.matrix.sum(axis=0))}

    def rows_for(self, sample: int) -> list[str]:
        """Names of the concepts sample ``sample`` has."""
        return [self.names[i] for i in np.flatnonzero(self.matrix[sample])]
