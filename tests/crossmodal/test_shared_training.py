"""A shared dictionary trained from a store: planted recovery (gap kept / removed), the
saved means reused at analysis time, joint and pooled hooks, and the bad-input errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tolerance import assert_close
from vlmfast import crossmodal as xm
from vlmfast.crossmodal.shared_rows import pool_rows
from vlmfast.crossmodal.shared_training import mixed_batches
from vlmfast.errors import InputError
from vlmfast.store import ActivationStore

N, D, C = 1000, 32, 8
NAMES = [f"c{j}" for j in range(C)]
KINDS = ["object"] * 4 + ["color"] * 4


def _store(path: Path, p: xm.PlantedCrossModal, hooks: dict[str, int] | None = None) -> Any:
    hooks = hooks or {"image.embed": D, "text.embed": D}
    s = ActivationStore.create(path, hooks, concepts=(NAMES, KINDS))
    ids = np.arange(len(p.image_rows))
    rows = {"image.embed": p.image_rows, "text.embed": p.text_rows}
    s.append_many(
        {h: rows[h][:, : hooks[h]].astype(np.float32) for h in hooks},
        {"sample": ids},
        labels=p.image_labels,
        label_samples=ids,
        caption_labels=p.text_labels,
    )
    return s


@pytest.fixture(scope="module")
def planted() -> xm.PlantedCrossModal:
    return xm.planted_pairs(n=N, d=D, n_concepts=C, shared_fraction=0.5, noise=0.1, seed=0)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, planted: xm.PlantedCrossModal) -> Any:
    return _store(tmp_path_factory.mktemp("shared") / "s.zarr", planted)


# a dictionary of the planted size: 14 concept features + the two modality offsets
CFG = dict(n_latents=16, k=8, steps=400, n_boot=50, n_null=50, single_object=False)


@pytest.mark.parametrize("remove_gap", [False, True], ids=["gap-kept", "gap-removed"])
def test_trained_dictionary_recovers_the_planted_fraction(
    store: Any, planted: xm.PlantedCrossModal, tmp_path: Path, remove_gap: bool
) -> None:
    cfg = xm.SharedSAEConfig(remove_gap=remove_gap, **CFG)  # type: ignore[arg-type]
    res = xm.train_shared_sae(store, cfg, tmp_path / "sae")
    truth = planted.invariant_fraction
    assert res.analysis is not None and res.n_pairs == N
    for t in (0.7, 0.8, 0.9):
        pt = res.analysis.invariant.at(t)
        assert pt.ci_low is not None and pt.ci_high is not None
        assert pt.ci_low <= truth <= pt.ci_high
        assert pt.fraction is not None and pt.null_mean is not None
        assert pt.fraction > pt.null_mean
    # 16 features make a coarse feature-permutation null: tested where it has power
    for t in (0.8, 0.9):
        pvalue = res.analysis.invariant.at(t).pvalue
        assert pvalue is not None and pvalue < 0.05
    assert res.fvu_image < 0.1 and res.fvu_text < 0.1
    out = res.to_dict()
    json.dumps(out)
    assert out["remove_gap"] is remove_gap and out["analysis"]["gap_removed"] is remove_gap


def test_saved_means_are_the_ones_encode_subtracts(
    store: Any, planted: xm.PlantedCrossModal, tmp_path: Path
) -> None:
    cfg = xm.SharedSAEConfig(**{**CFG, "remove_gap": True, "analyze": False, "steps": 50})  # type: ignore[arg-type]
    res = xm.train_shared_sae(store, cfg, tmp_path / "sae")
    assert res.analysis is None
    loaded = xm.load_shared_sae(tmp_path / "sae")
    gm = loaded.gap_means
    assert gm is not None and (loaded.image_hook, loaded.text_hook) == ("image.embed", "text.embed")
    assert_close(gm.image_mean, planted.image_rows.astype(np.float32).mean(0, dtype=np.float64))
    assert_close(gm.text_mean, planted.text_rows.astype(np.float32).mean(0, dtype=np.float64))
    # encode subtracts the recorded means: codes of rows = codes of a raw encode of rows - mean
    rows = planted.image_rows[:50]
    raw = xm.SharedSAE(loaded.sae, "image.embed", "text.embed", None)
    assert_close(loaded.encode(rows, "image"), raw.encode(rows - gm.image_mean, "image"))
    # the analysis of the store reuses them (not means recomputed on other rows)
    sub = ActivationStore.create(
        tmp_path / "half.zarr", {"image.embed": D, "text.embed": D}, concepts=(NAMES, KINDS)
    )
    ids = np.arange(300)
    sub.append_many(
        {
            "image.embed": planted.image_rows[:300].astype(np.float32),
            "text.embed": planted.text_rows[:300].astype(np.float32),
        },
        {"sample": ids},
        labels=planted.image_labels[:300],
        label_samples=ids,
        caption_labels=planted.text_labels[:300],
    )
    full, _, why = xm.analyze_shared_store(sub, loaded, xm.SharedSAEConfig(**CFG))  # type: ignore[arg-type]
    assert full.gap_means is gm and why is not None
    res.shared.sae.save(tmp_path / "plain")
    with pytest.raises(InputError, match="not a shared dictionary"):
        xm.load_shared_sae(tmp_path / "plain")


def test_single_object_pairs_are_analysed_where_labels_say(
    store: Any, planted: xm.PlantedCrossModal
) -> None:
    cfg = xm.SharedSAEConfig(**{**CFG, "single_object": True, "steps": 50})  # type: ignore[arg-type]
    res = xm.train_shared_sae(store, cfg)
    one_object = planted.image_labels[:, :4].sum(1) == 1  # kinds: 4 'object' columns
    assert res.single_object is not None and res.single_object.n_pairs == int(one_object.sum())
    assert res.path is None


def test_different_widths_and_one_tower_are_refused(
    tmp_path: Path, planted: xm.PlantedCrossModal
) -> None:
    s = _store(tmp_path / "w.zarr", planted, {"image.embed": D, "text.embed": 16})
    with pytest.raises(InputError, match=r"'image.embed' \(width 32\).*'text.embed' \(width 16\)"):
        xm.train_shared_sae(s, xm.SharedSAEConfig(**CFG))  # type: ignore[arg-type]
    one = _store(tmp_path / "one.zarr", planted, {"image.embed": D})
    with pytest.raises(InputError, match=r"'text.embed' is not in the store.*--hooks"):
        xm.train_shared_sae(one, xm.SharedSAEConfig(**CFG))  # type: ignore[arg-type]
    with pytest.raises(InputError, match="pool"):
        xm.SharedSAEConfig(pool="max")


def test_joint_hook_serves_both_towers(tmp_path: Path, planted: xm.PlantedCrossModal) -> None:
    s = ActivationStore.create(tmp_path / "j.zarr", {"joint.embed": D}, concepts=(NAMES, KINDS))
    n = 40
    ids = np.arange(n)
    rows = np.concatenate([planted.text_rows[:n], planted.image_rows[:n]]).astype(np.float32)
    index = {"sample": np.concatenate([ids, ids]), "modality": np.repeat([1, 0], n)}
    s.append_many(
        {"joint.embed": rows},
        index,
        labels=planted.image_labels[:n],
        label_samples=ids,
        caption_labels=planted.text_labels[:n],
    )
    pairs = xm.store_pairs(s)
    assert_close(pairs.image_rows, planted.image_rows[:n].astype(np.float32).astype(np.float64))
    assert_close(pairs.text_rows, planted.text_rows[:n].astype(np.float32).astype(np.float64))
    np.testing.assert_array_equal(pairs.text_labels, planted.text_labels[:n])


def test_token_rows_are_pooled_per_sample() -> None:
    rows = np.arange(12, dtype=np.float32).reshape(6, 2)
    sample = np.array([5, 5, 5, 2, 2, 9])
    pos = np.array([1, 0, 2, 3, 4, -1], dtype=np.int32)
    mean, ids = pool_rows(rows, sample, pos, "mean")
    np.testing.assert_array_equal(ids, [2, 5, 9])
    assert_close(mean, np.array([[7.0, 8.0], [2.0, 3.0], [10.0, 11.0]]))
    first, _ = pool_rows(rows, sample, pos, "first")
    last, _ = pool_rows(rows, sample, pos, "last")
    assert_close(first, np.array([[6.0, 7.0], [2.0, 3.0], [10.0, 11.0]]))
    assert_close(last, np.array([[8.0, 9.0], [4.0, 5.0], [10.0, 11.0]]))


def test_batches_mix_both_modalities_equally() -> None:
    img = np.arange(10, dtype=np.float64)[:, None]
    txt = -1.0 - np.arange(7, dtype=np.float64)[:, None]
    it = mixed_batches(img, txt, 8, seed=0)
    batches = [next(it).numpy()[:, 0] for _ in range(5)]
    assert all(b.shape == (8,) for b in batches)
    img_part = np.concatenate([b[:4] for b in batches])
    txt_part = np.concatenate([b[4:] for b in batches])
    assert (img_part >= 0).all() and (txt_part < 0).all()
    # without replacement, epoch after epoch: 20 image rows = each of 10 rows twice
    np.testing.assert_array_equal(np.bincount(img_part.astype(int)), np.full(10, 2))
    # the first 7 text rows drawn are one epoch: all 7 rows once
    assert sorted(txt_part[:7]) == sorted(txt[:, 0])
