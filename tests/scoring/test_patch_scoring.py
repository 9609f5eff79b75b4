"""score_store(tokens="patch") / vlmfast score --tokens patch: image patch rows against
their patch's box labels (sklearn AUROC on the reference labels), errors, no writes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from vlmfast.caching.boxes import box_attrs
from vlmfast.caching.geometry import InputGeometry
from vlmfast.errors import InputError
from vlmfast.scoring.from_store import score_store
from vlmfast.store import ActivationStore
from vlmfast.store.patch_grid import PatchGrid
from vlmfast.store.patch_grid import patch_labels_reference as reference
from vlmfast.store.records import BoxRows

IMG, TXT, EMB = "image.blocks.0.resid_post", "text.blocks.0.resid_post", "image.embed"
NAMES, KINDS = ["red", "circle", "left of"], ["color", "object", "relation"]
TOWERS = {"image": {"cls_token": True, "image_size": 64, "patch_size": 16}}
GRID = PatchGrid(64, 16, class_token=True)


def _build(path: Path, n: int = 40, d: int = 4, boxes: bool = True, seed: int = 0):
    """Image samples with a CLS row and 16 patch rows; unit 0 fires on patches whose box
    is red, unit 1 on patches whose box is a circle (noisy), unit 2 is noise."""
    rng = np.random.default_rng(seed)
    store = ActivationStore.create(
        path,
        {IMG: d, TXT: d, EMB: d},
        concepts=(NAMES, KINDS),
        image_basis="scene",
        towers=TOWERS,
        boxes=box_attrs(InputGeometry("squash", 64, 64), ["color", "object"]) if boxes else None,
        chunk_rows=64,
    )
    all_boxes = []
    for s in range(n):
        k = int(rng.integers(0, 3))
        cells = rng.permutation(16)[:k]
        xy = np.array(
            [
                [
                    (c % 4) * 0.25 + 0.03,
                    (c // 4) * 0.25 + 0.03,
                    (c % 4) * 0.25 + 0.2,
                    (c // 4) * 0.25 + 0.2,
                ]
                for c in cells
            ],
            np.float32,
        ).reshape(-1, 4)
        con = np.zeros((k, 3), bool)
        con[:, :2] = rng.random((k, 2)) < 0.5
        b = BoxRows(np.full(k, s, np.int64), xy, con)
        all_boxes.append(b)
        pos = np.arange(17)
        lab, _ = reference(np.full(17, s), pos, b, GRID)
        x = rng.normal(size=(17, d)).astype(np.float32)
        x[1:, 0] += 3.0 * lab[:, 0]
        x[1:, 1] += 2.0 * lab[:, 1]
        store.append_many(
            {
                IMG: x,
                TXT: rng.normal(size=(3, d)).astype(np.float32),
                EMB: rng.normal(size=(1, d)).astype(np.float32),
            },
            {
                IMG: {"sample": np.full(17, s), "position": pos},
                TXT: {"sample": np.full(3, s), "position": np.arange(3)},
                EMB: {"sample": [s]},
            },
            labels=rng.random((1, 3)) < 0.5,
            label_samples=[s],
            caption_labels=rng.random((1, 3)) < 0.5,
            boxes=b if boxes else None,
            commit=False,
        )
    store.commit()
    store.close()
    merged = BoxRows(
        np.concatenate([b.sample for b in all_boxes]),
        np.concatenate([b.boxes for b in all_boxes]),
        np.concatenate([b.concepts for b in all_boxes]),
    )
    return ActivationStore.open(path), merged


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode() + f.read_bytes())
    return h.hexdigest()


def test_patch_scores_match_sklearn(tmp_path):
    store, boxes = _build(tmp_path / "s.zarr")
    before = _digest(store.path)
    res = score_store(store, IMG, tokens="patch", batch_size=50)
    assert _digest(store.path) == before  # scoring never writes into the store
    assert list(res.per_modality) == ["image"]  # text rows are not scored in patch mode
    assert list(res.concepts.names) == ["red", "circle"]  # the kinds boxes carry
    img = res.per_modality["image"]
    idx = store.index(IMG)
    lab, keep = reference(idx.sample, idx.position, boxes, GRID)
    x = store.read(IMG).numpy()[keep]
    assert img.scores.n_rows == 40 * 16  # CLS rows left out
    got = np.asarray(img.scores.auroc)
    for u in range(x.shape[1]):
        for c in range(2):
            assert got[u, c] == pytest.approx(roc_auc_score(lab[:, c], x[:, u]), abs=1e-12)
    assert got[0, 0] > 0.95 and got[1, 1] > 0.8
    assert res.meta["aggregation"] == "patch"
    assert set(np.asarray(store.index(IMG).position)[img.rows].tolist()) <= set(range(1, 17))


def test_patch_on_store_without_boxes_names_hook_and_fix(tmp_path):
    store, _ = _build(tmp_path / "s.zarr", n=4, boxes=False)
    with pytest.raises(
        InputError, match=r"image\.blocks\.0\.resid_post.*no object boxes.*Re-cache"
    ):
        score_store(store, IMG, tokens="patch")


@pytest.mark.parametrize(
    ("hook", "match"), [(TXT, "not an image tower hook"), (EMB, "no token rows")]
)
def test_patch_needs_an_image_token_hook(tmp_path, hook, match):
    store, _ = _build(tmp_path / "s.zarr", n=4)
    with pytest.raises(InputError, match=match):
        score_store(store, hook, tokens="patch")


def test_cli_tokens_patch(tmp_path, capsys):
    from vlmfast.cli import main

    store, _ = _build(tmp_path / "s.zarr", n=12)
    out = tmp_path / "scores"
    rc = main(
        [
            "score",
            "--store",
            str(store.path),
            "--hook",
            IMG,
            "--tokens",
            "patch",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["meta"]["aggregation"] == "patch"
    assert list(summary["modalities"]) == ["image"]
    assert summary["modalities"]["image"]["rows"] == 12 * 16
