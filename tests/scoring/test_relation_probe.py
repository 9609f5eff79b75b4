"""relation_rows / relation_ground_truth on a small store: the rows each mode reads (CLS,
EOT, pooled, max / mean over patches, SAE codes), and a relation planted on the CLS rows'
direction found by the probe and by no single unit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tolerance import assert_close
from vlmfast.crossmodal.relations import RelationProbeConfig
from vlmfast.data.concepts.bound_relations import BOUND_KIND, bound_vocabulary
from vlmfast.errors import InputError
from vlmfast.scoring.relation_probe import relation_ground_truth, relation_rows
from vlmfast.store import ActivationStore

IMG, TXT, EMB = "image.blocks.0.resid_post", "text.blocks.0.resid_post", "image.embed"
VALUES = {"color": ("red", "green", "blue")}
NAMES = ["left of", "right of", *bound_vocabulary(VALUES)]
KINDS = ["relation", "relation"] + [BOUND_KIND] * (len(NAMES) - 2)


def _build(path: Path, n: int = 300, d: int = 48, seed: int = 0):
    """Two-object samples: the CLS row carries "first color is left" on a dense direction,
    patches carry the colors; captions say the relation for half the samples."""
    rng = np.random.default_rng(seed)
    towers = {"image": {"cls_token": True, "image_size": 32, "patch_size": 16}}
    store = ActivationStore.create(
        path, {IMG: d, TXT: d, EMB: d}, concepts=(NAMES, KINDS), image_basis="scene",
        towers=towers, chunk_rows=64,
    )  # fmt: skip
    col = {n_: i for i, n_ in enumerate(NAMES)}
    direction = rng.choice([-1.0, 1.0], size=d) / np.sqrt(d)
    vals = VALUES["color"]
    for s in range(n):
        a, b = rng.choice(3, 2, replace=False)
        left, right = (a, b) if rng.random() < 0.5 else (b, a)
        img = np.zeros((1, len(NAMES)), bool)
        img[0, [0, 1, col[f"{vals[left]} left of {vals[right]}"]]] = True
        cap = img if s % 2 else np.zeros_like(img)
        x = rng.normal(size=(5, d)).astype(np.float32)
        x[0] += 2.5 * (1.0 if left < right else -1.0) * direction
        x[1:, [a, b]] += 2.0
        store.append_many(
            {IMG: x, TXT: rng.normal(size=(3 + s % 2, d)).astype(np.float32),
             EMB: rng.normal(size=(1, d)).astype(np.float32)},
            {IMG: {"sample": np.full(5, s), "position": np.arange(5)},
             TXT: {"sample": np.full(3 + s % 2, s), "position": np.arange(3 + s % 2)},
             EMB: {"sample": [s]}},
            labels=img, label_samples=[s], caption_labels=cap, commit=False,
        )  # fmt: skip
    store.commit()
    store.close()
    return ActivationStore.open(path)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return _build(tmp_path_factory.mktemp("rel") / "s.zarr")


def test_rows_each_mode_reads(store):
    idx = store.index(IMG)
    x = store.read(IMG).numpy()
    pos, sample = np.asarray(idx.position), np.asarray(idx.sample)
    s, cls = relation_rows(store, IMG, "cls", batch_size=400)
    assert s.tolist() == list(range(300))
    assert_close(cls, x[pos == 0])
    _, mx = relation_rows(store, IMG, "max", batch_size=400)
    patches = x[pos > 0].reshape(300, 4, -1)
    assert_close(mx, patches.max(1))
    _, mean = relation_rows(store, IMG, "mean", batch_size=400)
    assert_close(mean, patches.mean(1))
    t = store.read(TXT).numpy()
    tpos, tsample = np.asarray(store.index(TXT).position), np.asarray(store.index(TXT).sample)
    last = np.r_[tsample[1:] != tsample[:-1], True]
    _, eot = relation_rows(store, TXT, "eot", batch_size=400)
    assert_close(eot, t[last])
    assert (tpos[last] == np.where(np.arange(300) % 2, 3, 2)).all()
    _, emb = relation_rows(store, EMB, "pooled")
    assert_close(emb, store.read(EMB).numpy())
    assert sample.shape == pos.shape


class _TopOne:
    """A stand-in SAE: each row's largest unit is its one code."""

    n_latents = 48

    def encode(self, x):
        import torch

        values, indices = torch.topk(x, 1, dim=1)
        return values, indices


def test_sae_codes_are_aggregated(store):
    _, codes = relation_rows(store, IMG, "max", sae=_TopOne())
    x = store.read(IMG).numpy()
    patches = x[np.asarray(store.index(IMG).position) > 0].reshape(300, 4, -1)
    expect = np.zeros((300, 48), np.float32)
    for s in range(300):
        for p in patches[s]:
            u = int(p.argmax())
            expect[s, u] = max(expect[s, u], p[u])
    assert_close(codes, expect)


def test_ground_truth_finds_the_planted_cls_relation(store):
    cfg = RelationProbeConfig(n_null=30, min_rows=40)
    gt = relation_ground_truth(
        store, {"image": IMG, "text": TXT}, saes={"image": _TopOne()}, values=VALUES, config=cfg
    )
    fam = {(f["modality"], f["name"]): f for f in gt["families"]}
    left = fam[("image", "color left of")]
    assert left["n_rows"] == 300 and left["accuracy"] > 0.85 and left["pvalue"] <= 1 / 31 + 1e-9
    assert left["best_unit_auroc"] < 0.75 and left["best_feature_auroc"] < 0.75
    text = fam[("text", "color left of")]
    assert text["n_rows"] == 150 and text["accuracy"] < 0.75  # text rows are noise
    assert gt["unordered_identical"] == {"image": {"left of / right of": 1.0}}
    assert gt["rows"]["image"].endswith("CLS rows (one per image)")
    assert gt["pairs"]["image"]["pairs"] == 2 * 3


def test_bad_rows_name_the_hook(store):
    with pytest.raises(InputError, match="rows must be one of"):
        relation_rows(store, IMG, "patch")
    with pytest.raises(InputError, match=r"no CLS token|no image rows"):
        relation_rows(store, TXT, "cls")


def test_defaults_and_a_store_without_bound_labels(store, tmp_path):
    from vlmfast.scoring.relation_probe import default_rows

    assert default_rows(store, IMG, "image") == "cls"
    assert default_rows(store, TXT, "text") == "eot"
    assert default_rows(store, EMB, "image") == "pooled"
    plain = ActivationStore.create(
        tmp_path / "p.zarr", {EMB: 4}, concepts=(["red"], ["color"]), image_basis="scene"
    )
    plain.append_many(
        {EMB: np.zeros((1, 4), np.float32)}, {EMB: {"sample": [0]}},
        labels=np.ones((1, 1), bool), label_samples=[0], caption_labels=np.ones((1, 1), bool),
    )  # fmt: skip
    plain.close()
    out = relation_ground_truth(ActivationStore.open(tmp_path / "p.zarr"), {"image": EMB})
    assert "re-cache" in out["unavailable"] and set(out) == {"unavailable"}
    with pytest.raises(InputError, match="modality 'joint'"):
        relation_ground_truth(store, {"joint": EMB})
