"""vf.scoring on synthetic codes with planted selective, polysemantic and invariant features."""

from __future__ import annotations

import json

import numpy as np
import pytest

import vlmfast as vf
from vlmfast.errors import InputError, ShapeError
from vlmfast.scoring import ConceptSet, ScoringConfig, SelectivityConfig

NAMES = ["dog", "car", "red", "blue", "left of"]
KINDS = ["object", "object", "color", "color", "relation"]
F, K = 40, 4


def planted(n: int = 600, seed: int = 0):
    """Rows alternate image/text. Feature 0 = dog (both modalities), 1 = red OR car
    (polysemantic), 2 = blue on image rows only; the rest random noise."""
    rng = np.random.default_rng(seed)
    labels = rng.random((n, len(NAMES))) < 0.2
    modality = (np.arange(n) % 2).astype(np.uint8)
    idx = np.zeros((n, K), dtype=np.int64)
    vals = np.zeros((n, K), dtype=np.float32)
    for r in range(n):
        feats: list[int] = []
        if labels[r, 0]:
            feats.append(0)
        if labels[r, 2] or labels[r, 1]:
            feats.append(1)
        if labels[r, 3] and modality[r] == 0:
            feats.append(2)
        noise = rng.permutation(np.arange(3, F))
        feats += list(noise[: K - len(feats)])
        idx[r] = feats[:K]
        vals[r] = rng.random(K) + 0.1
    return idx, vals, labels, modality


def test_planted_structure_is_found() -> None:
    idx, vals, labels, modality = planted()
    res = vf.scoring.score_codes(
        idx, vals, labels, F, concepts=ConceptSet.make(NAMES, KINDS), modality=modality
    )
    assert set(res.per_modality) == {"image", "text"}
    img = res.per_modality["image"].selectivity.selective
    txt = res.per_modality["text"].selectivity.selective
    assert img[0, 0] and txt[0, 0]  # dog, both modalities
    assert img[2, 3] and not txt[2, 3]  # blue, image only
    assert not img[3:].any() and not txt[3:].any()  # noise never selective
    assert res.invariant is not None
    assert res.invariant[0, 0] and not res.invariant[2].any()
    s = res.summary()
    m = s["modalities"]["image"]
    assert m["by_kind"]["object"]["count"] == 1  # feature 0 (feature 1 AUROC < 0.9 per concept)
    for kind in m["by_kind"].values():
        assert kind["low"] <= kind["count"] <= kind["high"]
    assert s["invariant"]["units"] == 1
    # the image scores only saw image rows: never pooled
    assert res.per_modality["image"].scores.n_rows == (modality == 0).sum()


def test_polysemantic_definition() -> None:
    concepts = ConceptSet.make(NAMES, KINDS, groups=["animal", "vehicle", "red", "blue", "rel"])
    sel = np.zeros((4, 5), dtype=bool)
    sel[0, [0]] = True  # one concept
    sel[1, [0, 2]] = True  # object + color: cross-kind
    sel[2, [0, 1]] = True  # two unrelated objects
    sel[3, [2]] = True
    poly, cross = vf.scoring.polysemantic_units(sel, concepts)
    assert poly.tolist() == [False, True, True, False]
    assert cross.tolist() == [False, True, False, False]
    related = ConceptSet.make(NAMES, KINDS, groups=["x", "x", "red", "blue", "rel"])
    assert vf.scoring.polysemantic_units(sel, related)[0].tolist() == [False, True, False, False]
    summ = vf.scoring.polysemantic_summary(sel, concepts)
    assert summ["selective_units"] == 4 and summ["polysemantic"]["count"] == 2
    lo, hi = summ["polysemantic"]["percent_ci"]
    assert lo < 50.0 < hi


def test_threshold_and_bh_are_applied() -> None:
    idx, vals, labels, _modality = planted(seed=1)
    strict = ScoringConfig(selectivity=SelectivityConfig(threshold=0.999))
    res = vf.scoring.score_codes(idx, vals, labels, F, config=strict)
    sel = res.per_modality["all"].selectivity
    assert not (sel.selective & (res.per_modality["all"].scores.auroc < 0.999)).any()
    assert (sel.selective <= sel.significant).all()


def test_save_writes_zarr_and_json(tmp_path) -> None:
    zarr = pytest.importorskip("zarr")
    idx, vals, labels, modality = planted()
    res = vf.scoring.score_codes(
        idx, vals, labels, F, concepts=ConceptSet.make(NAMES, KINDS), modality=modality
    )
    out = res.save(tmp_path / "scores")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["invariant"]["units"] == 1
    g = zarr.open_group(str(out / "scores.zarr"), mode="r")
    np.testing.assert_array_equal(g["image/auroc"][:], res.per_modality["image"].scores.auroc)
    assert g.attrs["concepts"] == NAMES
    # exemplar rows are positions in the full arrays: text exemplars are odd rows
    top = g["text/top_rows"][:]
    assert ((top[top >= 0] % 2) == 1).all()
    assert g["image/best_concept"][0, 0] == 0
    text = vf.scoring.format_summary(summary)
    assert "object" in text and "polysemantic" in text


def test_dense_units_and_cross_tower_null() -> None:
    rng = np.random.default_rng(5)
    n_i, n_t = 300, 200
    li = rng.random((n_i, 3)) < 0.3
    lt = rng.random((n_t, 3)) < 0.3
    ai = rng.normal(size=(n_i, 20)).astype(np.float32)
    at = rng.normal(size=(n_t, 15)).astype(np.float32)
    ai[:, 4] += 3 * li[:, 0]
    at[:, 9] += 3 * lt[:, 0]
    pairs = vf.scoring.cross_tower_pairs(ai, li, at, lt, n_perm=99, seed=0)
    assert pairs.image_unit[0] == 4 and pairs.text_unit[0] == 9
    assert pairs.significant[0] and not pairs.significant[1:].any()
    again = vf.scoring.cross_tower_pairs(ai, li, at, lt, n_perm=99, seed=0)
    np.testing.assert_array_equal(again.pvalue, pairs.pvalue)
    res = vf.scoring.score_units(ai, li)
    assert res.per_modality["all"].selectivity.selective[4, 0]


def test_labels_and_text_probing() -> None:
    texts, labels = vf.scoring.prompt_set(["dog", "red"], ["a {}", "the {} thing"])
    assert texts == ["a dog", "the dog thing", "a red", "the red thing"]
    assert labels.sum(0).tolist() == [2, 2]

    def encode(batch: list[str]):
        # feature 0 fires on "dog" prompts, feature 1 on "red" ones
        vals = np.ones((len(batch), 1), np.float32)
        idx = np.array([[0] if "dog" in t else [1] for t in batch])
        return vals, idx

    s = vf.scoring.probe_texts(
        encode, ["dog", "red"], ["a {}", "the {} thing", "my {}"], n_features=3
    )
    best = vf.scoring.best_concepts(s, top=2)
    assert best.concept[0, 0] == 0 and best.auroc[0, 0] == 1.0
    assert best.concept[1, 0] == 1
    rec = best.label(0, ["dog", "red"])
    assert rec[0]["concept"] == "dog" and len(rec[0]["ci"]) == 2
    dense = vf.scoring.probe_texts(
        lambda b: np.array([[float("red" in t)] for t in b]), ["dog", "red"]
    )
    assert dense.auroc[0, 1] == 1.0
    with pytest.raises(InputError):
        vf.scoring.prompt_set(["x"], ["no placeholder"])


def test_bad_inputs() -> None:
    idx, vals, labels, _modality = planted(n=50)
    with pytest.raises(InputError, match="modality"):
        vf.scoring.score_codes(idx, vals, labels, F, modality=np.full(50, 3))
    with pytest.raises(ShapeError):
        vf.scoring.score_codes(idx, vals, labels, F, concepts=ConceptSet.make(["a"]))
    with pytest.raises(InputError):
        SelectivityConfig(threshold=0.2)


def test_imagenet_probing_uses_the_bundled_vocabulary() -> None:
    pytest.importorskip("vlmfast.data.concepts")

    def encode(batch: list[str]) -> np.ndarray:
        # unit 0 reads "goldfish" prompts, unit 1 is constant
        return np.array([[float("goldfish" in t), 1.0] for t in batch], dtype=np.float32)

    scores, names = vf.scoring.probe_imagenet(encode, templates=["a photo of a {}.", "a {}"])
    assert len(names) == 200 and scores.auroc.shape == (2, 200)
    g = names.index("goldfish")
    assert scores.auroc[0, g] == 1.0 and (scores.auroc[1] == 0.5).all()
