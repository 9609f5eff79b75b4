"""The synthetic benchmark: ground truth checked against rendered pixels, negatives,
the compositional split, determinism, and the numpy renderer against the PIL reference."""

from __future__ import annotations

import numpy as np
import pytest

from vlmfast.data.synthetic import spec
from vlmfast.data.synthetic.captions import caption_true, heldout_combinations
from vlmfast.data.synthetic.dataset import make_sample, make_samples, render_batch
from vlmfast.data.synthetic.render import render_scene, render_scene_pil, shape_mask
from vlmfast.data.synthetic.scene import Scene, SceneObject
from vlmfast.data.synthetic.tokenizer import WordTokenizer

N = 300


@pytest.fixture(scope="module")
def samples() -> list:
    return make_samples(7, "test", range(N)) + make_samples(7, "compositional", range(N))


def _color_of(pixel: np.ndarray) -> str:
    dists = {
        c: np.abs(pixel.astype(int) - np.array(rgb)).sum() for c, rgb in spec.COLOR_RGB.items()
    }
    return min(dists, key=dists.__getitem__)


def test_pixels_match_ground_truth(samples: list) -> None:
    for s in samples:
        img = s.image().astype(int)
        covered = np.zeros(img.shape[:2], dtype=bool)
        for obj in s.scene.objects:
            y0, x0, y1, x1 = obj.box
            assert 0 <= y0 < y1 <= spec.IMAGE_SIZE and 0 <= x0 < x1 <= spec.IMAGE_SIZE
            # inside its own grid cell
            assert y0 >= obj.row * spec.CELL and y1 <= (obj.row + 1) * spec.CELL
            assert x0 >= obj.col * spec.CELL and x1 <= (obj.col + 1) * spec.CELL
            mask = shape_mask(obj.shape, obj.size)
            solid = mask > 0.99
            region = img[y0:y1, x0:x1]
            # fully covered pixels have exactly the object's color
            assert solid.sum() >= 10
            assert (region[solid] == np.array(spec.COLOR_RGB[obj.color])).all()
            assert _color_of(region[solid].mean(axis=0)) == obj.color
            covered[y0:y1, x0:x1] |= mask > 0
            # the bright pixels form the object's shape (IoU with its mask)
            lit = region.max(axis=2) > 0
            iou = (lit & (mask > 0)).sum() / (lit | (mask > 0)).sum()
            assert iou == 1.0
        assert (img[~covered] == 0).all()  # nothing drawn outside the objects


def test_relations_hold_in_pixels(samples: list) -> None:
    for s in samples:
        img = s.image()
        cents = []
        for obj in s.scene.objects:
            y0, x0, y1, x1 = obj.box
            lit = np.argwhere(img[y0:y1, x0:x1].max(axis=2) > 0) + np.array([y0, x0])
            cents.append(lit.mean(axis=0))
        for i, rel, j in s.scene.relations():
            (yi, xi), (yj, xj) = cents[i], cents[j]
            expect = {"left of": xi < xj, "right of": xi > xj, "above": yi < yj, "below": yi > yj}
            assert expect[rel], (s.index, rel)


def test_shapes_are_distinct_in_pixels() -> None:
    for size in spec.SIZES:
        masks = [shape_mask(sh, size) > 0.5 for sh in spec.SHAPES]
        for a in range(len(masks)):
            for b in range(a + 1, len(masks)):
                assert (masks[a] != masks[b]).sum() >= 6, (spec.SHAPES[a], spec.SHAPES[b], size)


def test_captions_true_and_negatives_false(samples: list) -> None:
    kinds = {"object": 0, "binding": 0, "relation": 0}
    for s in samples:
        assert caption_true(s.scene, s.caption), s.caption.text
        kinds[s.caption.kind] += 1
        for kind, neg in s.negatives.items():
            assert not caption_true(s.scene, neg), (kind, neg.text)
            assert neg.text != s.caption.text
        if s.caption.kind == "relation" and s.split == "compositional":
            assert "swapped_relation" in s.negatives
        colors = [o.color for o in s.scene.objects]
        shapes = [o.shape for o in s.scene.objects]
        assert len(set(colors)) == len(colors) and len(set(shapes)) == len(shapes)
    assert min(kinds.values()) > 20


def test_compositional_split(samples: list) -> None:
    train = make_samples(0, "train", range(N))
    for s in train + [x for x in samples if x.split == "test"]:
        assert not any((o.color, o.shape) in spec.HELDOUT_COLOR_SHAPE for o in s.scene.objects)
        assert not heldout_combinations(s.caption)
        assert not any(heldout_combinations(n) for n in s.negatives.values())
    comp = [x for x in samples if x.split == "compositional"]
    for s in comp:
        found = heldout_combinations(s.caption)
        assert found, s.caption.text
        if s.index % 2 == 0:
            o = s.scene.objects[0]
            assert (o.color, o.shape) in spec.HELDOUT_COLOR_SHAPE
        else:
            assert s.caption.kind == "relation"
            assert (
                s.caption.relation,
                s.caption.mentions[0].shape,
            ) in spec.HELDOUT_RELATION_SUBJECT
    seen = {(o.color, o.shape) for s in comp for o in s.scene.objects[:1] if s.index % 2 == 0}
    assert seen == set(spec.HELDOUT_COLOR_SHAPE)


def test_deterministic_and_random_access() -> None:
    a = make_samples(3, "train", range(40))
    b = make_samples(3, "train", range(40))
    assert [x.caption.text for x in a] == [x.caption.text for x in b]
    assert np.array_equal(render_batch(a), render_batch(b))
    assert make_sample(3, "train", 17).caption.text == a[17].caption.text  # random access
    c = make_samples(4, "train", range(40))
    assert [x.caption.text for x in a] != [x.caption.text for x in c]
    noisy1 = a[0].image(noise_std=10.0)
    assert np.array_equal(noisy1, a[0].image(noise_std=10.0))
    assert not np.array_equal(noisy1, a[0].image())


def test_numpy_renderer_matches_pil_reference(samples: list) -> None:
    for s in samples[:60]:
        fast = render_scene(s.scene).astype(int)
        ref = render_scene_pil(s.scene).astype(int)
        assert np.abs(fast - ref).max() <= 1  # same sub-pixels, rounding only
        tex_fast = render_scene(s.scene, texture=True).astype(int)
        tex_ref = render_scene_pil(s.scene, texture=True).astype(int)
        assert np.abs(tex_fast - tex_ref).max() <= 1
        assert not np.array_equal(tex_fast, fast)


def test_edge_scene_corners() -> None:
    objs = (
        SceneObject("star", "white", "large", 0, 0, 0, 0),
        SceneObject("cross", "red", "small", 3, 3, 64 - 9, 64 - 9),
    )
    scene = Scene(objs)
    img = render_scene(scene)
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    assert (0, "left of", 1) in scene.relations() and (1, "above", 0) not in scene.relations()
    assert np.abs(img.astype(int) - render_scene_pil(scene).astype(int)).max() <= 1


def test_tokenizer_eot_is_max_id() -> None:
    tok = WordTokenizer(18)
    ids = tok(["a red circle left of a blue square", "an unknownword"])
    assert ids.shape == (2, 18)
    assert int(ids.max()) == tok.eot_id == tok.vocab_size - 1
    for row in ids:
        assert int(row.argmax()) == int((row != 0).sum()) - 1  # argmax pooling hits EOT
    assert (
        tok.decode(tok.encode("a red circle left of a blue square"))
        == "a red circle left of a blue square"
    )
    assert tok.encode("an unknownword")[2] == tok.unk_id
    long = tok([" ".join(["red"] * 40)])
    assert int(long[0, -1]) == tok.eot_id
