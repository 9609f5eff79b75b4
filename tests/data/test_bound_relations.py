"""Bound relation labels (``red left of blue``) mean what they say: checked against object
centres and rendered pixels (images) and against the caption text (captions), and they are
not the degenerate unordered labels (``left of`` == ``right of`` on every image)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from vlmfast.data.concepts.bound_relations import (
    BOUND_KIND,
    UNORDERED_MEANING,
    bound_name,
    bound_vocabulary,
    caption_bound_relations,
    image_bound_relations,
    reverse_name,
)
from vlmfast.data.sources.open import open_source
from vlmfast.data.sources.synthetic import synthetic_concepts
from vlmfast.data.synthetic import spec
from vlmfast.data.synthetic.captions import parse_caption
from vlmfast.data.synthetic.dataset import make_sample
from vlmfast.errors import InputError

N, SEED = 1000, 5


@pytest.fixture(scope="module")
def labelled():
    src = open_source(f"synthetic:n={N},seed={SEED}")
    recs = list(src)
    return recs, src.labels(recs), src.caption_labels(recs)


def _centres(objects) -> list[tuple[float, float]]:
    return [((b[1] + b[3]) / 2, (b[0] + b[2]) / 2) for b in (o["box"] for o in objects)]


def test_names_vocabulary_and_errors():
    assert bound_name("blue", "right of", "red") == "red left of blue"
    assert bound_name("square", "below", "circle") == "circle above square"
    assert reverse_name("red left of blue") == "blue left of red"
    with pytest.raises(InputError, match="unknown relation 'near'"):
        bound_name("a", "near", "b")
    with pytest.raises(InputError, match="not a bound relation name"):
        reverse_name("red")
    names, kinds = synthetic_concepts()
    bound = [n for n, k in zip(names, kinds) if k == BOUND_KIND]
    c, s = len(spec.COLORS), len(spec.SHAPES)
    assert len(bound) == len(set(bound)) == 2 * (c * (c - 1) + s * (s - 1))
    assert bound == bound_vocabulary({"color": spec.COLORS, "shape": spec.SHAPES})
    assert synthetic_concepts(bound=False)[0] == names[: len(names) - len(bound)]
    assert set(UNORDERED_MEANING) == set(spec.RELATIONS)


def test_image_label_true_exactly_when_centre_is_left(labelled):
    """``A left of B`` <=> an object with value A has its box centre more than half a grid
    cell left of an object with value B's (different columns); ``above`` likewise."""
    recs, lab, _ = labelled
    cols = [i for i, k in enumerate(lab.kinds) if k == BOUND_KIND]
    half = spec.CELL / 2
    for r, rec in enumerate(recs):
        objs = rec.meta["objects"]
        cen = _centres(objs)
        expect = set()
        for i, j in itertools.permutations(range(len(objs)), 2):
            for attr in ("color", "shape"):
                a, b = objs[i][attr], objs[j][attr]
                if cen[i][0] + half < cen[j][0]:
                    expect.add(f"{a} left of {b}")
                if cen[i][1] + half < cen[j][1]:
                    expect.add(f"{a} above {b}")
        got = {lab.names[c] for c in cols if lab.matrix[r, c]}
        assert got == expect, rec.meta


def test_image_label_agrees_with_rendered_pixels():
    for k in range(150):
        s = make_sample(SEED, "test", k)
        img = s.image()
        cen = []
        for o in s.scene.objects:
            y0, x0, y1, x1 = o.box
            lit = np.argwhere(img[y0:y1, x0:x1].max(axis=2) > 0) + np.array([y0, x0])
            cen.append(lit.mean(axis=0))
        got = s.scene.bound_relations()
        for i, j in itertools.permutations(range(len(cen)), 2):
            a, b = s.scene.objects[i], s.scene.objects[j]
            left = cen[i][1] + spec.CELL / 2 < cen[j][1]
            assert (f"{a.color} left of {b.color}" in got) == left
            assert (f"{a.shape} left of {b.shape}" in got) == left


def test_caption_label_agrees_with_caption_text(labelled):
    recs, lab, cap = labelled
    cols = [i for i, k in enumerate(cap.kinds) if k == BOUND_KIND]
    n_relation = 0
    for r, rec in enumerate(recs):
        words = rec.caption.split()
        rel = next((x for x in spec.RELATIONS if f" {x} " in rec.caption), None)
        expect = set()
        if rel is not None:
            n_relation += 1
            subj, _, obj = rec.caption.partition(f" {rel} ")
            for vocab in (spec.COLORS, spec.SHAPES):
                a = [w for w in subj.split() if w in vocab]
                b = [w for w in obj.split() if w in vocab]
                if a and b:
                    x, y = (b[0], a[0]) if rel in ("right of", "below") else (a[0], b[0])
                    expect.add(f"{x} {'left of' if 'of' in rel else 'above'} {y}")
        got = {cap.names[c] for c in cols if cap.matrix[r, c]}
        assert got == expect, (rec.caption, words)
        assert got == parse_caption(rec.caption).bound_relations()
        assert got <= {lab.names[c] for c in cols if lab.matrix[r, c]}  # true captions
    assert n_relation > 100


def test_bound_labels_are_not_degenerate(labelled):
    _, lab, _ = labelled
    m, col = lab.matrix, {n: i for i, n in enumerate(lab.names)}
    assert (m[:, col["left of"]] == m[:, col["right of"]]).all()  # the unordered ones are
    assert (m[:, col["above"]] == m[:, col["below"]]).all()
    red_blue, blue_red = m[:, col["red left of blue"]], m[:, col["blue left of red"]]
    assert red_blue.any() and blue_red.any() and not (red_blue & blue_red).any()
    for name in (n for n, k in zip(lab.names, lab.kinds) if k == BOUND_KIND):
        a, b = m[:, col[name]], m[:, col[reverse_name(name)]]
        assert (a != b).any(), name


def test_boxes_without_grid_cells_use_centres():
    objs = [{"color": "red", "box": [0, 0, 10, 10]}, {"color": "blue", "box": [0, 20, 10, 30]}]
    assert image_bound_relations(objs) == {"red left of blue"}
    assert caption_bound_relations({"color": "red"}, "right of", {"color": "blue"}) == {
        "blue left of red"
    }
    with pytest.raises(InputError, match="neither a grid cell"):
        image_bound_relations([{"color": "red"}, {"color": "blue"}])
