"""Polysemanticity is judged on atomic concepts: a bound relation (a compound, passed
one-vs-rest by a plain color unit) makes no unit polysemantic and is not in the
denominator."""

from __future__ import annotations

import numpy as np

from vlmfast.scoring.concepts import ConceptSet
from vlmfast.scoring.polysemantic import (
    atomic_columns,
    polysemantic_summary,
    polysemantic_units,
)

NAMES = ["red", "blue", "circle", "left of", "red left of blue", "circle above square"]
KINDS = ["color", "color", "object", "relation", "bound relation", "bound relation"]


def test_bound_relations_are_left_out_of_polysemanticity():
    concepts = ConceptSet.make(NAMES, KINDS)
    assert atomic_columns(concepts).tolist() == [True] * 4 + [False] * 2
    sel = np.zeros((4, len(NAMES)), bool)
    sel[0, [0, 4]] = True  # red + red left of blue: a color unit
    sel[1, [0, 2, 4]] = True  # red + circle: polysemantic on the atomic concepts
    sel[2, [4, 5]] = True  # two bound relations only: not counted at all
    poly, cross = polysemantic_units(sel, concepts)
    assert poly.tolist() == [False, True, False, False] and cross.tolist() == poly.tolist()
    summary = polysemantic_summary(sel, concepts)
    assert summary["selective_units"] == 2 and summary["polysemantic"]["count"] == 1
    plain = ConceptSet.make(NAMES[:4], KINDS[:4])
    assert polysemantic_units(sel[:, :4], plain)[0].tolist() == poly.tolist()
