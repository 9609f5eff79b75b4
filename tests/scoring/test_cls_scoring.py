"""score_store(tokens="cls") / vlmfast score --tokens cls: each image's CLS row against what
the image shows (sklearn AUROC on the same rows), the rows recorded and printed, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from vlmfast.errors import InputError
from vlmfast.scoring.from_store import score_store
from vlmfast.scoring.store_rows import ROWS_USED
from vlmfast.store import ActivationStore

IMG, TXT, EMB = "image.blocks.0.resid_post", "text.blocks.0.resid_post", "image.embed"
NAMES, KINDS = ["red", "red left of blue"], ["color", "bound relation"]


def _build(path: Path, n: int = 40, d: int = 4, cls: bool = True, seed: int = 0):
    """Image samples of a CLS row + 4 patch rows: unit 0 reads concept 1 on the CLS row
    only (patches are noise), unit 1 reads concept 0 on patches only."""
    rng = np.random.default_rng(seed)
    towers = {"image": {"cls_token": cls, "image_size": 32, "patch_size": 16}}
    store = ActivationStore.create(
        path, {IMG: d, TXT: d, EMB: d}, concepts=(NAMES, KINDS), image_basis="scene",
        towers=towers, chunk_rows=64,
    )  # fmt: skip
    labels = rng.random((n, 2)) < 0.5
    for s in range(n):
        x = rng.normal(size=(5, d)).astype(np.float32)
        x[0, 0] += 3.0 * labels[s, 1]
        x[1:, 1] += 3.0 * labels[s, 0]
        store.append_many(
            {IMG: x, TXT: rng.normal(size=(3, d)).astype(np.float32),
             EMB: rng.normal(size=(1, d)).astype(np.float32)},
            {IMG: {"sample": np.full(5, s), "position": np.arange(5)},
             TXT: {"sample": np.full(3, s), "position": np.arange(3)}, EMB: {"sample": [s]}},
            labels=labels[s : s + 1], label_samples=[s], caption_labels=labels[s : s + 1],
            commit=False,
        )  # fmt: skip
    store.commit()
    store.close()
    return ActivationStore.open(path), labels


def test_cls_scores_one_row_per_image(tmp_path):
    store, labels = _build(tmp_path / "s.zarr")
    res = score_store(store, IMG, tokens="cls", batch_size=17)
    assert list(res.per_modality) == ["image"]  # text rows are not scored in cls mode
    img = res.per_modality["image"]
    assert img.scores.n_rows == 40
    assert set(np.asarray(store.index(IMG).position)[img.rows].tolist()) == {0}
    x = store.read(IMG).numpy()[np.asarray(store.index(IMG).position) == 0]
    got = np.asarray(img.scores.auroc)
    for u in range(x.shape[1]):
        for c in range(2):
            assert got[u, c] == pytest.approx(roc_auc_score(labels[:, c], x[:, u]), abs=1e-12)
    assert got[0, 1] > 0.9  # the CLS-only reader is found
    assert res.meta["aggregation"] == "cls" and res.meta["rows"] == ROWS_USED["cls"]


def test_rows_recorded_for_every_mode(tmp_path):
    store, _ = _build(tmp_path / "s.zarr", n=12)
    assert score_store(store, IMG, tokens="max").meta["rows"] == ROWS_USED["max"]
    assert score_store(store, EMB, tokens="auto").meta["rows"] == ROWS_USED["pooled"]


def test_cls_errors_name_the_hook_and_fix(tmp_path):
    store, _ = _build(tmp_path / "s.zarr", n=4, cls=False)
    with pytest.raises(InputError, match=r"no CLS token.*image\.blocks\.0\.resid_post.*pooled"):
        score_store(store, IMG, tokens="cls")
    store, _ = _build(tmp_path / "t.zarr", n=4)
    with pytest.raises(InputError, match="no token rows"):
        score_store(store, EMB, tokens="cls")


def test_cli_tokens_cls_prints_rows(tmp_path, capsys):
    from vlmfast.cli import main

    store, _ = _build(tmp_path / "s.zarr", n=12)
    out = tmp_path / "scores"
    argv = ["score", "--store", str(store.path), "--hook", IMG, "--tokens", "cls"]
    assert main([*argv, "--out", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["meta"]["rows"] == ROWS_USED["cls"]
    assert summary["modalities"]["image"]["rows"] == 12
    assert f"rows scored: {ROWS_USED['cls']} of {IMG}" in capsys.readouterr().out
