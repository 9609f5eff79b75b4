"""Object boxes through a cache run: the synthetic scene's grid cells, the 2-rank merge,
COCO instances, patch scoring on the cached store."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlmfast.caching import CacheConfig, run_cache
from vlmfast.store import ActivationStore
from vlmfast.store.patch_grid import PatchGrid, patch_labels

HOOK = "image.blocks.0.resid_post"
GRID = PatchGrid(image_size=64, patch_size=16, class_token=True)  # the bundled model's


def _rect_image(w, h, rect):
    arr = np.zeros((h, w, 3), np.uint8)
    x0, y0, x1, y1 = rect
    arr[y0:y1, x0:x1] = 255
    return Image.fromarray(arr)


@pytest.fixture(scope="module")
def synth_store(tmp_path_factory):
    out = tmp_path_factory.mktemp("boxes") / "s.zarr"
    cfg = CacheConfig(
        model="synthetic:tiny",
        data="synthetic:n=24,seed=3",
        hooks=[HOOK],
        positions="all",
        out=out,
        batch_size=8,
        progress=False,
        decode_workers=0,
    )
    return run_cache(cfg, log=lambda _: None)


def test_synthetic_patch_labels_are_the_scene_cells(synth_store):
    from vlmfast.data import open_source
    from vlmfast.data.sources.synthetic import synthetic_concepts

    store = synth_store
    assert store.attrs["boxes"]["geometry"]["mode"] == "squash"
    boxes = store.boxes
    assert boxes is not None and len(boxes) == store.attrs["committed_box_rows"] > 24
    idx = store.index(HOOK)
    grid = PatchGrid.from_tower(store.attrs["towers"]["image"])
    assert (grid.side, grid.class_token) == (4, True)
    lab, keep = patch_labels(idx.sample, idx.position, boxes, grid)
    assert int((~keep).sum()) == 24  # one CLS row per image
    names, _ = synthetic_concepts()
    col = {n: i for i, n in enumerate(names)}
    want = np.zeros_like(lab)
    kept_s, kept_p = idx.sample[keep], idx.position[keep] - 1
    for rec in open_source("synthetic:n=24,seed=3"):
        for obj in rec.meta["objects"]:
            r = np.flatnonzero((kept_s == rec.sample_id) & (kept_p == obj["row"] * 4 + obj["col"]))
            assert len(r) == 1
            for key in ("shape", "color", "size"):
                want[r[0], col[obj[key]]] = True
    assert np.array_equal(lab, want)
    assert not lab[:, [col[r] for r in ("left of", "above")]].any()


def test_two_rank_merge_carries_the_boxes(tmp_path, synth_store):
    """The merge of two part stores (run in this process) equals one process."""
    from vlmfast.caching.config import part_path
    from vlmfast.caching.crash import Crash
    from vlmfast.caching.loop import cache_loop
    from vlmfast.caching.merge import commit_final, create_final, make_plan, write_share
    from vlmfast.caching.ranks import _of_rank
    from vlmfast.caching.setup import setup_cache

    out = tmp_path / "m.zarr"
    cfg = CacheConfig(
        model="synthetic:tiny",
        data="synthetic:n=24,seed=3",
        hooks=[HOOK],
        positions="all",
        out=out,
        batch_size=8,
        progress=False,
        decode_workers=0,
    )
    setup = setup_cache(cfg)
    for rank in range(2):
        want = {"rank": rank, "world": 2, "batch_size": 8}
        store, _ = cache_loop(
            cfg,
            setup,
            part_path(out, rank, 2),
            None,
            0,
            select=partial(_of_rank, rank=rank, world=2),
            user_attrs=want,
            show_progress=False,
        )
        store.close()
    plan = make_plan(out, 2)
    create_final(cfg.out, plan)
    shares = [write_share(out, plan, r, 2) for r in range(2)]
    commit_final(out, plan, [w for w, _ in shares], shares[0][1], Crash(None))
    merged, single = ActivationStore.open(out).boxes, synth_store.boxes
    assert merged is not None and len(merged) == len(single)
    assert np.array_equal(merged.sample, single.sample)
    assert np.array_equal(merged.boxes, single.boxes)
    assert np.array_equal(merged.concepts, single.concepts)
    assert ActivationStore.open(out).attrs["boxes"] == synth_store.attrs["boxes"]
    assert not Path(str(out) + ".parts").exists()


# ---------------------------------------------------------------- COCO instances


def _coco(tmp_path: Path) -> Path:
    import json

    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    (root / "val2017").mkdir()
    for i in (1, 2):
        _rect_image(128, 64, (0, 0, 0, 0)).save(root / "val2017" / f"{i}.png")
    images = [{"id": i, "file_name": f"{i}.png", "width": 128, "height": 64} for i in (1, 2)]
    caps = {
        "images": images,
        "annotations": [
            {"id": 1, "image_id": 1, "caption": "A zebra."},
            {"id": 2, "image_id": 2, "caption": "A person."},
        ],
    }
    inst = {
        "images": images,
        "categories": [
            {"id": 24, "name": "zebra"},
            {"id": 1, "name": "person"},
            {"id": 9, "name": "blorp"},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 24, "bbox": [0, 0, 32, 32]},
            {"id": 2, "image_id": 2, "category_id": 1, "bbox": [96, 32, 32, 32]},
            {"id": 3, "image_id": 2, "category_id": 9, "bbox": [0, 0, 10, 10]},  # no concept
        ],
    }
    (root / "annotations" / "captions_val2017.json").write_text(json.dumps(caps))
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(inst))
    return root / "annotations" / "captions_val2017.json"


def test_coco_boxes_from_instances(tmp_path):
    from vlmfast.data import open_source

    src = open_source(str(_coco(tmp_path)), concepts="coco")
    recs = list(src)
    assert src.has_boxes and recs[0].meta["boxes"] == [["zebra", 0.0, 0.0, 32.0, 32.0]]
    found = src.boxes(recs)
    assert found.record.tolist() == [0, 1]  # blorp matches no concept: left out
    assert np.allclose(found.boxes, [[0, 0, 0.25, 0.5], [0.75, 0.5, 1, 1]])
    names = src.labeler.names
    assert [names[i] for i in np.flatnonzero(found.concepts[0])] == ["zebra"]
    assert [names[i] for i in np.flatnonzero(found.concepts[1])] == ["person"]
    no_inst = open_source(str(_coco(tmp_path / "b")), concepts="coco")
    no_inst.instances_path = None
    assert not no_inst.has_boxes and no_inst.boxes(recs) is None


def test_coco_cache_gives_patch_labels(tmp_path):
    """COCO boxes through the bundled model's squash to 64 x 64 (a 4 x 4 grid)."""
    data = _coco(tmp_path)
    cfg = CacheConfig(
        model="synthetic:tiny",
        data=str(data),
        hooks=[HOOK],
        positions="all",
        out=tmp_path / "c.zarr",
        concepts="coco",
        progress=False,
        decode_workers=0,
    )
    store = run_cache(cfg, log=lambda _: None)
    assert store.attrs["boxes"]["kinds"] == ["object"]
    idx = store.index(HOOK)
    lab, keep = patch_labels(
        idx.sample, idx.position, store.boxes, PatchGrid(64, 16, class_token=True)
    )
    names = store.labels.names
    zebra, person = names.index("zebra"), names.index("person")
    s, p = idx.sample[keep], idx.position[keep] - 1
    # zebra: x [0, 1/4), y [0, 1/2) -> patches (0, 0), (1, 0); person: x [3/4, 1), y [1/2, 1)
    assert sorted(p[lab[:, zebra]].tolist()) == [0, 4] and set(s[lab[:, zebra]]) == {0}
    assert sorted(p[lab[:, person]].tolist()) == [11, 15] and set(s[lab[:, person]]) == {1}


def test_score_patch_on_the_synthetic_cache(synth_store):
    from sklearn.metrics import roc_auc_score

    from vlmfast.scoring.from_store import score_store

    res = score_store(synth_store, HOOK, tokens="patch")
    assert set(res.concepts.kinds) == {"object", "color", "size"}  # relations carry no box
    img = res.per_modality["image"]
    assert img.scores.n_rows == 24 * 16
    idx = synth_store.index(HOOK)
    lab, keep = patch_labels(idx.sample, idx.position, synth_store.boxes, GRID)
    names = list(synth_store.labels.names)
    c = names.index(res.concepts.names[0])
    x = synth_store.read(HOOK).numpy()[keep]
    want = roc_auc_score(lab[:, c], x[:, 3])
    assert float(np.asarray(img.scores.auroc)[3, 0]) == pytest.approx(want, abs=1e-12)
