"""Image-side counterfactuals: the same synthetic scene with one attribute changed."""

from __future__ import annotations

import numpy as np
import pytest

from vlmfast.data.pairs import read_pairs
from vlmfast.data.synthetic import spec
from vlmfast.data.synthetic.counterfactual import (
    concept_kind,
    counterfactual_images,
    counterfactual_scene,
    scene_of,
    swap_target,
)
from vlmfast.data.synthetic.dataset import make_sample
from vlmfast.data.synthetic.render import render_scene
from vlmfast.data.synthetic.scene import Scene, SceneObject
from vlmfast.errors import InputError


def _scene() -> Scene:
    return Scene(
        (
            SceneObject("circle", "red", "large", 0, 0, 1, 1),
            SceneObject("square", "green", "small", 2, 3, 35, 51),
        )
    )


def _changed_pixels(a: Scene, b: Scene) -> tuple[int, int, int, int]:
    diff = (render_scene(a).astype(int) != render_scene(b).astype(int)).any(-1)
    ys, xs = np.nonzero(diff)
    return int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1


def test_color_and_shape_change_one_object_only() -> None:
    scene = _scene()
    assert concept_kind("red") == "color" and concept_kind("left of") == "relation"
    assert swap_target("red", scene) == "blue"  # green is taken: the next free color
    cf = counterfactual_scene(scene, "red")
    assert [o.color for o in cf.objects] == ["blue", "green"]
    assert cf.objects[1] == scene.objects[1]
    y0, x0, y1, x1 = _changed_pixels(scene, cf)
    by0, bx0, by1, bx1 = scene.objects[0].box
    assert by0 <= y0 and bx0 <= x0 and y1 <= by1 and x1 <= bx1  # inside the red box
    shaped = counterfactual_scene(scene, "circle", to="star")
    assert [o.shape for o in shaped.objects] == ["star", "square"]
    sized = counterfactual_scene(scene, "small")
    assert sized.objects[1].size == "large" and sized.objects[1].row == 2
    with pytest.raises(InputError, match="already has"):
        counterfactual_scene(scene, "red", to="green")
    with pytest.raises(InputError, match="no object"):
        counterfactual_scene(scene, "purple")
    with pytest.raises(InputError, match="giraffe"):
        counterfactual_scene(scene, "giraffe")


def test_relation_swaps_the_captions_subject_and_object() -> None:
    scene = _scene()
    assert spec.relation_holds("left of", 0, 0, 2, 3)
    caption = {
        "relation": "left of",
        "mentions": [{"color": "red", "shape": "circle"}, {"color": "green", "shape": None}],
    }
    cf = counterfactual_scene(scene, "left of", caption=caption)
    red, green = cf.objects
    assert (red.row, red.col, green.row, green.col) == (2, 3, 0, 0)
    assert not spec.relation_holds("left of", red.row, red.col, green.row, green.col)
    assert spec.relation_holds("right of", red.row, red.col, green.row, green.col)
    # each object keeps its centring in its new cell
    assert render_scene(cf).sum() == render_scene(scene).sum()
    with pytest.raises(InputError, match="relation"):
        counterfactual_scene(Scene(scene.objects[:1]), "left of")


def test_images_of_records_rerender_with_the_change() -> None:
    records = read_pairs("synthetic:n=60,seed=2", 4, naming="red").records
    out = counterfactual_images(records, "red")
    for rec, img in zip(records, out, strict=True):
        scene = scene_of(rec.meta)
        want = render_scene(counterfactual_scene(scene, "red"))
        assert np.array_equal(np.asarray(img), want)
        assert not np.array_equal(np.asarray(img), np.asarray(rec.image))
    sample = make_sample(2, "test", records[0].sample_id)
    assert scene_of(sample.meta()) == sample.scene
    with pytest.raises(InputError, match="meta"):
        scene_of({})
