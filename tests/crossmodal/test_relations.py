"""Relation probes on planted data: a relation held by a direction that no single unit holds
is read by the probe (high held-out accuracy, beats its label-shuffled null) while the best
single unit stays near chance; without the direction the probe is at chance."""

from __future__ import annotations

import numpy as np
import pytest

from vlmfast.crossmodal.relations import (
    RelationProbeConfig,
    family_contrasts,
    pair_contrasts,
    probe_relation,
    relation_probes,
)
from vlmfast.data.concepts.bound_relations import BOUND_KIND, bound_vocabulary
from vlmfast.data.concepts.labels import ConceptLabels
from vlmfast.errors import InputError, ShapeError

VALUES = {"color": ("red", "green", "blue", "cyan")}
CFG = RelationProbeConfig(n_null=50, seed=1)


def _planted(n: int = 1200, d: int = 128, strength: float = 2.0, seed: int = 0):
    """Two-object rows: each color present lights its own unit; which color is left lives
    on a dense direction (every unit gets 1/sqrt(d) of it)."""
    rng = np.random.default_rng(seed)
    names = bound_vocabulary(VALUES)
    col = {n_: i for i, n_ in enumerate(names)}
    mat = np.zeros((n, len(names)), bool)
    x = rng.normal(size=(n, d))
    direction = rng.choice([-1.0, 1.0], size=d) / np.sqrt(d)
    first_left = np.zeros(n, bool)
    for r in range(n):
        a, b = rng.choice(4, 2, replace=False)
        left, right = (a, b) if rng.random() < 0.5 else (b, a)
        vals = VALUES["color"]
        mat[r, col[f"{vals[left]} left of {vals[right]}"]] = True
        x[r, [a, b]] += 2.0
        first_left[r] = left < right
        x[r] += strength * (1.0 if first_left[r] else -1.0) * direction
    labels = ConceptLabels(mat, names, [BOUND_KIND] * len(names))
    return x, labels, first_left


def test_probe_reads_a_direction_no_unit_holds():
    x, labels, first_left = _planted()
    res = relation_probes(x, labels, values=VALUES, rows="planted", config=CFG)
    fam = {p.name: p for p in res.probes if p.scope == "family"}
    left = fam["color left of"]
    assert left.n_rows == 1200 and left.n_positive == int(first_left.sum())
    assert left.accuracy is not None and left.accuracy > 0.85
    assert left.accuracy_ci[0] > left.null_accuracy_q95
    assert left.auroc > 0.9 and left.pvalue <= 1 / 51 + 1e-12
    assert left.best_unit_auroc is not None and left.best_unit_auroc < 0.7
    assert left.majority < 0.6
    above = fam["color above"]  # no row has an "above" relation: undefined, not 0
    assert above.n_rows == 0 and above.accuracy is None and above.auroc is None
    pairs = [p for p in res.probes if p.scope == "pair"]
    assert len(pairs) == 2 * 6  # per relation, each unordered color pair once
    assert res.to_dict()["rows"] == "planted"


def test_probe_is_at_chance_without_the_direction():
    x, labels, _ = _planted(strength=0.0)
    res = relation_probes(x, labels, values=VALUES, config=CFG)
    left = next(p for p in res.probes if p.name == "color left of")
    assert left.accuracy < 0.62 and left.best_unit_auroc < 0.62


def test_contrasts_are_the_rows_where_order_differs():
    names = ["red left of blue", "blue left of red", "red left of green", "green left of red"]
    m = np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0], [1, 0, 1, 0], [1, 1, 0, 0]], bool)
    pairs = pair_contrasts(names, m)
    assert list(pairs) == ["red left of blue", "red left of green"]
    rows, y = pairs["red left of blue"]
    assert rows.tolist() == [0, 1, 3] and y.tolist() == [True, False, True]  # row 4: both
    fam = family_contrasts(names, m, {"color": ("red", "green", "blue")})
    rows, y = fam["color left of"]
    assert rows.tolist() == [0, 1] and y.tolist() == [True, False]  # exactly one pair holds


def test_undefined_and_bad_input():
    rng = np.random.default_rng(0)
    small = probe_relation(rng.normal(size=(10, 3)), rng.random(10) < 0.5, "r", config=CFG)
    assert small.accuracy is None and small.best_unit is None
    one_class = probe_relation(rng.normal(size=(80, 3)), np.ones(80, bool), "r", config=CFG)
    assert one_class.auroc is None
    x, labels, _ = _planted(n=50)
    with pytest.raises(ShapeError, match="x has shape"):
        relation_probes(x[:10], labels)
    plain = ConceptLabels(np.zeros((50, 1), bool), ["red"], ["color"])
    with pytest.raises(InputError, match="no bound relation column"):
        relation_probes(x, plain)
