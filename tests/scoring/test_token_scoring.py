"""score_store with token aggregation (max/mean per sample) and labels per modality,
against numpy aggregation + sklearn on a real ActivationStore."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from vlmfast.errors import InputError
from vlmfast.scoring.from_store import score_store
from vlmfast.store import ActivationStore, Labels

NAMES, KINDS = ["red", "circle", "left of"], ["color", "object", "relation"]


def _build(path, n=90, d=6, seed=0, chunk_rows=64):
    """Image samples with 1..40 token rows, text samples with 1..9; unit 0 fires on one
    token of images showing red, unit 1 on one token of captions saying circle."""
    rng = np.random.default_rng(seed)
    img_lab = rng.random((n, 3)) < 0.4
    cap_lab = img_lab & (rng.random((n, 3)) < 0.6)  # a caption names a subset of the scene
    img_rows, img_idx, txt_rows, txt_idx = [], [], [], []
    for s in range(n):
        t = int(rng.integers(1, 41))
        x = rng.normal(size=(t, d)).astype(np.float32)
        if img_lab[s, 0]:
            x[rng.integers(t), 0] += 5.0
        img_rows.append(x)
        img_idx.append((np.full(t, s), np.arange(t)))
        u = int(rng.integers(1, 10))
        y = rng.normal(size=(u, d)).astype(np.float32)
        if cap_lab[s, 1]:
            y[rng.integers(u), 1] += 5.0
        y[:, 2] = np.round(y[:, 2])  # ties
        txt_rows.append(y)
        txt_idx.append((np.full(u, s), np.arange(u)))
    store = ActivationStore.create(
        path,
        {"image.blocks.0.resid_post": d, "text.blocks.0.resid_post": d},
        chunk_rows=chunk_rows,
        concepts=(NAMES, KINDS),
        image_basis="scene",
    )

    def index(parts, modality):
        sample = np.concatenate([p[0] for p in parts])
        return {
            "sample": sample,
            "position": np.concatenate([p[1] for p in parts]).astype(np.int32),
            "modality": np.full(len(sample), modality, np.uint8),
        }

    store.append_many(
        {
            "image.blocks.0.resid_post": np.concatenate(img_rows),
            "text.blocks.0.resid_post": np.concatenate(txt_rows),
        },
        {
            "image.blocks.0.resid_post": index(img_idx, 0),
            "text.blocks.0.resid_post": index(txt_idx, 1),
        },
        labels=img_lab,
        label_samples=np.arange(n),
        caption_labels=cap_lab,
    )
    store.close()
    return ActivationStore.open(path), img_rows, txt_rows, img_lab, cap_lab


def _expected(rows, labels, mode):
    agg = np.stack([r.max(0) if mode == "max" else r.astype(np.float64).mean(0) for r in rows])
    out = np.full((agg.shape[1], labels.shape[1]), np.nan)
    for u in range(agg.shape[1]):
        for c in range(labels.shape[1]):
            if 0 < labels[:, c].sum() < len(labels):
                out[u, c] = roc_auc_score(labels[:, c], agg[:, u])
    return out


@pytest.mark.parametrize("mode", ["max", "mean"])
def test_units_aggregated_per_sample_against_sklearn(tmp_path, mode):
    store, img_rows, txt_rows, img_lab, cap_lab = _build(tmp_path / "s.zarr")
    for hook, rows, lab, name in (
        ("image.blocks.0.resid_post", img_rows, img_lab, "image"),
        ("text.blocks.0.resid_post", txt_rows, cap_lab, "text"),
    ):
        res = score_store(store, hook, tokens=mode, batch_size=50)  # samples split across reads
        got = np.asarray(res.per_modality[name].scores.auroc)
        np.testing.assert_allclose(got, _expected(rows, lab, mode), atol=1e-5)
        assert res.meta["aggregation"] == mode
        assert res.meta["samples_scored"] == {name: len(rows)}
        assert "caption" in res.meta["labels"]["text"]
    # the planted units are found against the right labels
    img = score_store(store, "image.blocks.0.resid_post", tokens="max").per_modality["image"]
    assert float(np.asarray(img.scores.auroc)[0, 0]) > 0.95
    txt = score_store(store, "text.blocks.0.resid_post", tokens="max").per_modality["text"]
    assert float(np.asarray(txt.scores.auroc)[1, 1]) > 0.95


def test_auto_is_max_for_token_hooks_and_text_uses_caption_labels(tmp_path):
    store, _, txt_rows, img_lab, cap_lab = _build(tmp_path / "s.zarr")
    auto = score_store(store, "text.blocks.0.resid_post")
    assert auto.meta["aggregation"] == "max"
    got = np.asarray(auto.per_modality["text"].scores.auroc)
    np.testing.assert_allclose(got, _expected(txt_rows, cap_lab, "max"), atol=1e-5)
    against_image = _expected(txt_rows, img_lab, "max")
    assert not np.allclose(got, against_image, atol=1e-3, equal_nan=True)


def test_sae_codes_aggregated_per_sample(tmp_path):
    from vlmfast.sae import TopKSAE

    store, img_rows, _, img_lab, _ = _build(tmp_path / "s.zarr")
    torch.manual_seed(0)
    sae = TopKSAE(d_in=6, n_latents=20, k=3)
    res = score_store(store, "image.blocks.0.resid_post", sae=sae, tokens="max", batch_size=37)
    with torch.no_grad():
        dense = []
        for r in img_rows:
            v, i = sae.encode(torch.from_numpy(r))
            z = torch.zeros(len(r), 20)
            z.scatter_(1, i, v.float())
            dense.append(z.numpy())
    want = _expected(dense, img_lab, "max")
    got = np.asarray(res.per_modality["image"].scores.auroc)
    np.testing.assert_allclose(got, want, atol=1e-5)
    blocked = score_store(
        store, "image.blocks.0.resid_post", sae=sae, tokens="max", feature_block=7
    )
    np.testing.assert_allclose(np.asarray(blocked.per_modality["image"].scores.auroc), got)


def test_bad_requests_name_the_hook_and_the_fix(tmp_path):
    store, *_ = _build(tmp_path / "s.zarr")
    with pytest.raises(InputError, match=r"image.blocks.0.resid_post has no pooled rows.*max"):
        score_store(store, "image.blocks.0.resid_post", tokens="pooled")
    with pytest.raises(InputError, match="tokens must be one of"):
        score_store(store, "image.blocks.0.resid_post", tokens="median")
    before = sorted(p.stat().st_mtime_ns for p in (tmp_path / "s.zarr").rglob("*"))
    score_store(store, "image.blocks.0.resid_post", tokens="max")
    after = sorted(p.stat().st_mtime_ns for p in (tmp_path / "s.zarr").rglob("*"))
    assert before == after  # scoring never writes into the store


def test_non_contiguous_token_rows_are_refused(tmp_path):
    store = ActivationStore.create(
        tmp_path / "bad.zarr", {"image.blocks.0.resid_post": 2}, concepts=(NAMES, KINDS)
    )
    store.append_many(
        {"image.blocks.0.resid_post": np.ones((4, 2), np.float32)},
        {"sample": np.array([0, 1, 0, 1]), "position": np.array([0, 0, 1, 1], np.int32)},
        labels=np.zeros((2, 3), bool),
        label_samples=np.array([0, 1]),
        caption_labels=np.zeros((2, 3), bool),
    )
    with pytest.raises(InputError, match="sample 0 are not contiguous"):
        score_store(store, "image.blocks.0.resid_post", tokens="max")


def test_old_stores_score_text_against_the_one_matrix_with_a_warning():
    lab = Labels(np.eye(3, dtype=bool), np.arange(3), NAMES, KINDS)
    assert lab.for_modality(0) is lab.matrix
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert lab.for_modality(1) is lab.matrix
    assert any("no caption labels" in str(w.message) for w in caught)
    both = Labels(np.eye(3, dtype=bool), np.arange(3), NAMES, KINDS, caption=np.zeros((3, 3), bool))
    assert not both.for_modality(1).any()
