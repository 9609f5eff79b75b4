"""evaluate_suite on a hand-built store: token types, held-out rows, widths, JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tolerance import assert_close
from vlmfast.errors import HookNameError, InputError, ShapeError
from vlmfast.sae import SuiteConfig, TopKSAE, evaluate, evaluate_suite
from vlmfast.sae.eval_rows import eval_batches, plan_eval_rows

store_mod = pytest.importorskip("vlmfast.store")
D = 8


@pytest.fixture
def store(tmp_path):
    """10 images of 1 CLS + 3 patch rows; 10 captions of 2..4 token rows."""
    g = torch.Generator().manual_seed(0)
    s = store_mod.ActivationStore.create(
        tmp_path / "acts.zarr",
        {"image.blocks.0.resid_post": D, "text.blocks.0.resid_post": D},
        chunk_rows=16,
        positions="all",
        towers={"image": {"cls_token": True, "image_size": 4, "patch_size": 2}},
    )
    img_sample = np.repeat(np.arange(10), 4)
    img_pos = np.tile(np.arange(4), 10)
    s.append(
        "image.blocks.0.resid_post",
        torch.randn(40, D, generator=g).numpy(),
        index={"sample": img_sample, "position": img_pos},
    )
    lengths = [2 + i % 3 for i in range(10)]
    txt_sample = np.repeat(np.arange(10), lengths)
    txt_pos = np.concatenate([np.arange(n) for n in lengths])
    s.append(
        "text.blocks.0.resid_post",
        torch.randn(len(txt_sample), D, generator=g).numpy(),
        index={"sample": txt_sample, "position": txt_pos},
    )
    return s


def _labels(store, plan, batch_size=5):
    xs, labs = zip(*eval_batches(store, plan, batch_size))
    return torch.cat(xs), np.concatenate(labs)


def test_token_types_and_rows(store):
    x, lab = _labels(store, plan_eval_rows(store, "image.blocks.0.resid_post", "all"))
    assert x.shape == (40, D)
    assert (lab == "cls").sum() == 10 and (lab == "patch").sum() == 30
    x, lab = _labels(store, plan_eval_rows(store, "image.blocks.0.resid_post", "tokens"))
    assert set(lab) == {"patch"} and x.shape[0] == 30
    x, lab = _labels(store, plan_eval_rows(store, "text.blocks.0.resid_post", "all"), 4)
    assert (lab == "eot").sum() == 10 and (lab == "token").sum() == len(lab) - 10
    x, lab = _labels(store, plan_eval_rows(store, "joint.blocks.0.resid_post", "all"))
    assert set(lab) == {"cls", "patch", "token", "eot"}


def test_held_out_starts_at_a_sample_boundary_and_max_rows_caps(store):
    plan = plan_eval_rows(store, "image.blocks.0.resid_post", "all", held_out=0.25)
    assert plan.ranges == {"image.blocks.0.resid_post": (32, 40)}  # 30 -> next sample: 32
    plan = plan_eval_rows(store, "image.blocks.0.resid_post", "all", max_rows=7)
    assert _labels(store, plan, 3)[0].shape[0] == 7
    with pytest.raises(InputError, match="held_out"):
        plan_eval_rows(store, "image.blocks.0.resid_post", "all", held_out=0.0)


def test_suite_matches_evaluate_and_is_json(store, tmp_path):
    hook = "image.blocks.0.resid_post"
    sae = TopKSAE(D, 32, 4, hook=hook, rows="all")
    report = evaluate_suite(sae, store=store, config=SuiteConfig(batch_size=7))
    rec = report.reconstruction
    assert sorted(rec.by_type) == ["cls", "patch"]
    ref = evaluate(sae, store.read(hook).float()).overall
    f64 = torch.float64
    assert_close(
        torch.tensor(rec.overall.fvu, dtype=f64),
        torch.tensor(ref.fvu, dtype=f64),
        dtype=torch.float32,
    )
    assert rec.overall.density_histogram == ref.density_histogram
    assert report.downstream is None and report.sae["k"] == 4 and report.sae["rows"] == "all"
    saved = json.loads(report.save(tmp_path / "e.json").read_text())
    assert saved["reconstruction"]["overall"]["n_rows"] == 40
    assert saved["rows"]["ranges"] == {hook: [0, 40]}
    # the SAE's training rows are the default: rows=tokens leaves CLS out
    tokens = evaluate_suite(TopKSAE(D, 32, 4, hook=hook, rows="tokens"), store=store)
    assert sorted(tokens.reconstruction.by_type) == ["patch"] and tokens.rows["rows"] == "tokens"


def test_bad_inputs_name_the_store_and_hook(store):
    with pytest.raises(HookNameError, match=r"image\.blocks\.5\.resid_post"):
        evaluate_suite(TopKSAE(D, 16, 2, hook="image.blocks.5.resid_post"), store=store)
    with pytest.raises(ShapeError, match=r"acts\.zarr.*width 8.*d_in is 6"):
        evaluate_suite(TopKSAE(6, 16, 2, hook="image.blocks.0.resid_post"), store=store)
    with pytest.raises(InputError, match="records no hook"):
        evaluate_suite(TopKSAE(D, 16, 2), store=store)
    with pytest.raises(InputError, match=r"store.*or a model"):
        evaluate_suite(TopKSAE(D, 16, 2, hook="image.blocks.0.resid_post"))
