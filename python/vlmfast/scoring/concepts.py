"""Concept metadata used by the analysis: names, kinds and relatedness groups."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from vlmfast.errors import InputError


@dataclass(frozen=True)
class ConceptSet:
    """The concepts (columns of a label matrix) being scored.

    Raises:
        InputError: ``kinds`` (or a non-empty ``groups``) does not have one entry per name.
    """

    names: tuple[str, ...]
    """One name per concept column, e.g. ``"dog"``, ``"red"``, ``"left of"``."""
    kinds: tuple[str, ...]
    """Kind of each concept (``"object"``, ``"color"``, ``"relation"``, ...)."""
    groups: tuple[str, ...] = field(default=())
    """Relatedness class of each concept: two concepts of the same kind and the
    same group are *related* (e.g. ``dog`` and ``puppy`` in group ``"dog"``).
    Empty: every concept is its own group."""

    def __post_init__(self) -> None:
        if len(self.kinds) != len(self.names):
            raise InputError(f"kinds has {len(self.kinds)} entries but names has {len(self.names)}")
        if self.groups and len(self.groups) != len(self.names):
            raise InputError(
                f"groups has {len(self.groups)} entries but names has {len(self.names)}"
            )

    @classmethod
    def make(
        cls,
        names: Sequence[str],
        kinds: Sequence[str] | None = None,
        groups: Sequence[str] | None = None,
    ) -> ConceptSet:
        """Returns a new set; kinds default to ``"concept"``."""
        names_t = tuple(str(n) for n in names)
        kinds_t = tuple(str(k) for k in kinds) if kinds is not None else ("concept",) * len(names_t)
        return cls(names_t, kinds_t, tuple(str(g) for g in groups) if groups is not None else ())

    def __len__(self) -> int:
        return len(self.names)

    @property
    def group_of(self) -> tuple[str, ...]:
        """The group of each concept (its own name when no groups were given)."""
        return self.groups or self.names

    @property
    def kind_names(self) -> list[str]:
        """Distinct kinds, in first-seen order."""
        return list(dict.fromkeys(self.kinds))

    def kind_mask(self, kind: str) -> npt.NDArray[np.bool_]:
        """Returns the ``[C]`` bool mask of the concepts of kind ``kind``."""
        return np.array([k == kind for k in self.kinds], dtype=bool)

    def unrelated(self) -> npt.NDArray[np.bool_]:
        """Returns a ``[C, C]`` bool matrix: concepts of different kinds, or of different groups."""
        kinds = np.array(self.kinds, dtype=object)
        groups = np.array(self.group_of, dtype=object)
        return (kinds[:, None] != kinds[None, :]) | (groups[:, None] != groups[None, :])
