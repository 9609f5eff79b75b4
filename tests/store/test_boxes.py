"""Object boxes with the labels: the patch rule, the synthetic scene's grid cells, the
preprocessing geometry, crash safety, old stores, the 2-rank merge."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vlmfast.errors import InputError
from vlmfast.store import ActivationStore
from vlmfast.store.boxes import (
    BoxRows,
    InputGeometry,
    PatchGrid,
    box_attrs,
    input_geometry,
    patch_labels,
    patch_labels_reference,
)
from vlmfast.store.cache import CacheConfig, run_cache

HOOK = "image.blocks.0.resid_post"
GRID = PatchGrid(image_size=64, patch_size=16, class_token=True)  # the bundled model's
Q = 0.25  # one patch side, normalised


def _one(box, concepts=(True,)):
    return BoxRows(np.array([7], np.int64), np.array([box], np.float32), np.array([concepts], bool))


def _hit_patches(box):
    """Patches (row-major) the rule makes positive for one box."""
    pos = np.arange(1, 17)
    lab, keep = patch_labels(np.full(16, 7), pos, _one(box), GRID)
    assert keep.all()
    return set(np.flatnonzero(lab[:, 0]).tolist())


def test_rule_centre_in_patch():
    # a small box inside patch (1, 2): centre there, covers 1/16 of it
    assert _hit_patches([2 * Q + 0.05, Q + 0.05, 2 * Q + 0.1, Q + 0.1]) == {1 * 4 + 2}


def test_rule_quarter_cover_without_centre():
    # centre in patch (1, 1); it covers exactly a quarter of patch (0, 0) and more of
    # (0, 1), (1, 0): those are positive too; (2, *) and (*, 2) get less than a quarter
    box = [Q / 2, Q / 2, 1.5 * Q + 0.01, 1.5 * Q + 0.01]
    assert _hit_patches(box) == {0, 1, 4, 5}


def test_rule_neither():
    # a thin box over patches (0, 0) and (0, 1), centre in (0, 1): it covers under a
    # quarter of (0, 0) (0.05 x 0.05 of 0.25 x 0.25) and holds no centre there
    box = [0.2, 0.0, 0.3, 0.05]
    assert _hit_patches(box) == {1}


def test_cls_and_pooled_rows_excluded():
    lab, keep = patch_labels(
        np.array([7, 7, 7, 7]), np.array([0, -1, 1, 16]), _one([0, 0, 0.1, 0.1]), GRID
    )
    assert keep.tolist() == [False, False, True, True]
    assert lab[:, 0].tolist() == [True, False]
    no_cls = PatchGrid(64, 16, class_token=False)
    lab, keep = patch_labels(np.array([7, 7]), np.array([0, 16]), _one([0, 0, 0.1, 0.1]), no_cls)
    assert keep.tolist() == [True, False] and lab[:, 0].tolist() == [True]


def test_fast_path_matches_reference():
    rng = np.random.default_rng(0)
    n_boxes, c = 40, 5
    a, b = rng.random((n_boxes, 2)), rng.random((n_boxes, 2))
    boxes = BoxRows(
        np.sort(rng.integers(0, 6, n_boxes)),
        np.concatenate([np.minimum(a, b), np.maximum(a, b)], axis=1).astype(np.float32),
        rng.random((n_boxes, c)) < 0.4,
    )
    grid = PatchGrid(70, 14, class_token=True)  # 5 x 5
    sample = np.repeat(np.arange(7), 27)
    position = np.tile(np.arange(-1, 26), 7)
    got, keep = patch_labels(sample, position, boxes, grid)
    ref, ref_keep = patch_labels_reference(sample, position, boxes, grid)
    assert np.array_equal(keep, ref_keep)
    assert np.array_equal(got, ref)
    assert got.any() and not got.all()


# ---------------------------------------------------------------- geometry


def _rect_image(w, h, rect):
    arr = np.zeros((h, w, 3), np.uint8)
    x0, y0, x1, y1 = rect
    arr[y0:y1, x0:x1] = 255
    return Image.fromarray(arr)


def _bright_box(px: torch.Tensor):
    """(x0, y0, x1, y1) normalised of the pixels above mid grey of a [3, S, S] tensor."""
    m = px.float().mean(0).numpy() > 0.5
    ys, xs = np.nonzero(m)
    s = m.shape[0]
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]) / s


@pytest.mark.parametrize("mode", ["shortest", "squash"])
@pytest.mark.parametrize("wh", [(96, 64), (50, 90)])
def test_geometry_matches_open_clip_transform(mode, wh):
    from open_clip.transform import PreprocessCfg, image_transform_v2

    t = image_transform_v2(
        PreprocessCfg(size=32, mean=(0, 0, 0), std=(1, 1, 1), resize_mode=mode), is_train=False
    )
    geom = input_geometry(type("P", (), {"_preprocess": t})())
    assert geom is not None and geom.mode == ("shortest_crop" if mode == "shortest" else "squash")
    w, h = wh
    rect = (w // 3, h // 4, w // 3 + 24, h // 4 + 30)
    got = _bright_box(t(_rect_image(w, h, rect)))
    norm = np.array([rect[0] / w, rect[1] / h, rect[2] / w, rect[3] / h], np.float32)
    mapped, keep = geom.map(norm[None], np.array([[w, h]]))
    assert keep[0]
    assert np.allclose(mapped[0], got, atol=1.5 / 32)  # resampling blurs an edge by <= 1 px


def test_geometry_drops_boxes_outside_the_crop():
    geom = InputGeometry("shortest_crop", 32, 32)
    # a 128 x 32 image: the crop keeps x in [48, 80); a box in x [0, 20) is cut away
    boxes = np.array([[0, 0, 20 / 128, 1], [40 / 128, 0, 60 / 128, 0.5]], np.float32)
    mapped, keep = geom.map(boxes, np.array([[128, 32], [128, 32]]))
    assert keep.tolist() == [False, True]
    assert np.allclose(mapped[1], [0, 0, 12 / 32, 0.5])


def test_geometry_hf_fallback_and_squash():
    from vlmfast.models.loading.hf_processing import fallback_transform

    class _Pre:
        family, image_size = "clip", 32

        def _processor(self):
            return False

    _Pre.__name__ = "HFPreprocess"
    geom = input_geometry(type("P", (), {"_preprocess": _Pre()})())
    assert geom == InputGeometry("shortest_crop", 32, 32, "hf_fallback")
    rect = (10, 30, 40, 60)
    img = _rect_image(60, 100, rect)
    got = _bright_box(fallback_transform(img, "clip", 32) * 0.26 + 0.45)
    norm = np.array([[10 / 60, 30 / 100, 40 / 60, 60 / 100]], np.float32)
    mapped, _ = geom.map(norm, np.array([[60, 100]]))
    assert np.allclose(mapped[0], got, atol=1.5 / 32)
    assert input_geometry(type("P", (), {"_preprocess": object()})()) is None


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_geometry_matches_hf_image_processor(family):
    transformers = pytest.importorskip("transformers")
    if family == "clip":
        proc = transformers.CLIPImageProcessor(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
        )
    else:
        proc = transformers.SiglipImageProcessor(size={"height": 32, "width": 32})

    class _Pre:
        def _processor(self):
            return proc

    _Pre.__name__ = "HFPreprocess"
    geom = input_geometry(type("P", (), {"_preprocess": _Pre()})())
    assert geom is not None and geom.mode == ("shortest_crop" if family == "clip" else "squash")
    for w, h in ((96, 64), (50, 90)):
        rect = (w // 3, h // 4, w // 3 + 24, h // 4 + 30)
        px = torch.as_tensor(
            proc(images=[_rect_image(w, h, rect)], return_tensors="np")["pixel_values"][0]
        )
        got = _bright_box(px - px.min() - 0.5 * (px.max() - px.min()) + 0.5)
        norm = np.array([[rect[0] / w, rect[1] / h, rect[2] / w, rect[3] / h]], np.float32)
        mapped, _ = geom.map(norm, np.array([[w, h]]))
        assert np.allclose(mapped[0], got, atol=1.5 / 32)


# ---------------------------------------------------------------- synthetic cache


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


def test_store_without_boxes_opens(tmp_path):
    store = ActivationStore.create(tmp_path / "old.zarr", {HOOK: 3}, concepts=(["red"], ["color"]))
    store.append_many(
        {HOOK: np.zeros((2, 3), np.float32)},
        {"sample": np.array([0, 0]), "position": np.array([0, 1])},
        labels=np.ones((1, 1), bool),
        label_samples=[0],
        caption_labels=np.ones((1, 1), bool),
    )
    store.close()
    again = ActivationStore.open(tmp_path / "old.zarr")
    assert again.boxes is None and "boxes" not in again.attrs
    with pytest.raises(InputError, match="boxes given but the store was created without"):
        ActivationStore.open(tmp_path / "old.zarr", mode="a").append_many(
            {HOOK: np.zeros((1, 3), np.float32)}, boxes=_one([0, 0, 0.5, 0.5])
        )


def _boxed_store(path):
    return ActivationStore.create(
        path,
        {HOOK: 3},
        concepts=(["red", "circle"], ["color", "object"]),
        boxes=box_attrs(InputGeometry("squash", 64, 64), ["color", "object"]),
        chunk_rows=4,
    )


def _batch(store, s, commit=True):
    store.append_many(
        {HOOK: np.zeros((2, 3), np.float32)},
        {"sample": np.array([s, s]), "position": np.array([0, 1])},
        labels=np.ones((1, 2), bool),
        label_samples=[s],
        caption_labels=np.ones((1, 2), bool),
        boxes=BoxRows(
            np.array([s] * 3), np.full((3, 4), 0.1 * (s + 1), np.float32), np.ones((3, 2), bool)
        ),
        commit=commit,
    )


def test_uncommitted_boxes_are_not_visible(tmp_path):
    path = tmp_path / "b.zarr"
    store = _boxed_store(path)
    _batch(store, 0)
    _batch(store, 1)
    _batch(store, 2, commit=False)  # never committed: a crash here loses it

    def crash(stage):
        if stage == "flushed":
            raise RuntimeError("killed")

    _batch(store, 3, commit=False)
    store._crash_hook = crash
    with pytest.raises(RuntimeError):
        store.commit()  # chunks and shapes on disk, commit point not reached
    store.close()
    seen = ActivationStore.open(path)
    assert seen.attrs["committed_box_rows"] == 6
    assert seen.boxes.sample.tolist() == [0, 0, 0, 1, 1, 1]
    assert np.allclose(seen.boxes.boxes[3:], 0.2)
    more = ActivationStore.open(path, mode="a")  # truncates back, then goes on
    _batch(more, 5)
    more.close()
    assert ActivationStore.open(path).boxes.sample.tolist() == [0, 0, 0, 1, 1, 1, 5, 5, 5]


def test_two_rank_merge_carries_the_boxes(tmp_path, synth_store):
    """The merge of two part stores (run in this process) equals one process."""
    from vlmfast.store.cache import _Crash, cache_loop, setup_cache
    from vlmfast.store.cache_ranks import (
        _create_final,
        _of_rank,
        commit_final,
        make_plan,
        part_path,
        write_share,
    )

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
    _create_final(cfg, plan)
    shares = [write_share(out, plan, r, 2) for r in range(2)]
    commit_final(out, plan, [w for w, _ in shares], shares[0][1], _Crash(None))
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
