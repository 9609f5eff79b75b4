"""Checkpoints: SAELens layout, sparsify import, exact resume, clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from vlmfast.errors import InputError, ShapeError
from vlmfast.sae import (
    SAETrainer,
    TopKSAE,
    TrainConfig,
    resume_trainer,
    save_training_checkpoint,
    train,
)


def _batches(n, seed=0, rows=32, d=8):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(rows, d, generator=g) for _ in range(n)]


def test_saelens_layout_roundtrip(tmp_path):
    sae = TopKSAE(8, 24, 3, hook="image.blocks.1.resid_post", model="synthetic:tiny")
    sae.init_from_batch(_batches(1)[0])
    sae.save(tmp_path)
    tensors = load_file(str(tmp_path / "sae_weights.safetensors"))
    assert tensors["W_enc"].shape == (8, 24) and tensors["W_dec"].shape == (24, 8)
    assert tensors["b_enc"].shape == (24,) and tensors["b_dec"].shape == (8,)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert (cfg["d_in"], cfg["d_sae"], cfg["k"], cfg["architecture"]) == (8, 24, 3, "topk")
    assert cfg["hook_name"] == "image.blocks.1.resid_post"
    loaded = TopKSAE.load(tmp_path)
    x = _batches(1, seed=3)[0]
    torch.testing.assert_close(loaded(x), sae(x))
    assert loaded.cfg.hook == "image.blocks.1.resid_post"


def test_encoder_init_norm_is_recorded_and_old_checkpoints_load(tmp_path):
    sae = TopKSAE(8, 24, 3, encoder_init_norm=0.25)
    sae.save(tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert cfg["vlmfast"]["encoder_init_norm"] == 0.25
    assert TopKSAE.load(tmp_path).cfg.encoder_init_norm == 0.25
    # a checkpoint saved before the option existed: it used the tied init (1.0)
    del cfg["vlmfast"]["encoder_init_norm"]
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    old = TopKSAE.load(tmp_path)
    assert old.cfg.encoder_init_norm == 1.0
    x = _batches(1, seed=3)[0]
    assert torch.equal(old(x), sae(x))


def test_saelens_written_checkpoint_without_vlmfast_section(tmp_path):
    w_dec = torch.nn.functional.normalize(torch.randn(16, 8), dim=1)
    save_file(
        {
            "W_enc": w_dec.t().contiguous(),
            "W_dec": w_dec,
            "b_enc": torch.zeros(16),
            "b_dec": torch.zeros(8),
        },
        str(tmp_path / "sae_weights.safetensors"),
    )
    (tmp_path / "cfg.json").write_text(
        json.dumps(
            {
                "architecture": "topk",
                "d_in": 8,
                "d_sae": 16,
                "activation_fn_kwargs": {"k": 4},
                "hook_name": "h",
            }
        )
    )
    sae = TopKSAE.load(tmp_path)
    assert (sae.d_in, sae.n_latents, sae.k, sae.cfg.hook) == (8, 16, 4, "h")


def test_sparsify_import(tmp_path):
    g = torch.Generator().manual_seed(0)
    enc_w, enc_b = torch.randn(32, 8, generator=g), torch.randn(32, generator=g)
    w_dec, b_dec = torch.randn(32, 8, generator=g), torch.randn(8, generator=g)
    save_file(
        {"encoder.weight": enc_w, "encoder.bias": enc_b, "W_dec": w_dec, "b_dec": b_dec},
        str(tmp_path / "sae.safetensors"),
    )
    (tmp_path / "cfg.json").write_text(
        json.dumps({"k": 4, "num_latents": 32, "expansion_factor": 4, "d_in": 8})
    )
    sae = TopKSAE.load(tmp_path)
    x = torch.randn(5, 8, generator=g)
    # sparsify's forward: relu(encoder(x - b_dec)), top-k, decode + b_dec
    pre = torch.relu((x - b_dec) @ enc_w.T + enc_b)
    top = pre.topk(4, dim=1)
    expected = (top.values[:, :, None] * w_dec[top.indices]).sum(1) + b_dec
    torch.testing.assert_close(sae(x), expected, rtol=1e-5, atol=1e-5)


def test_resume_equals_uninterrupted(tmp_path):
    data = _batches(8)
    cfg = TrainConfig(lr=3e-3, warmup_steps=2)

    full = SAETrainer(TopKSAE(8, 24, 3, dead_tokens=64, input_scaling=True), cfg, total_steps=8)
    train(data, [full])

    first = SAETrainer(TopKSAE(8, 24, 3, dead_tokens=64, input_scaling=True), cfg, total_steps=8)
    train(data[:4], [first])
    save_training_checkpoint(first, tmp_path / "ckpt")
    resumed = resume_trainer(tmp_path / "ckpt", expect_d_in=8)
    assert resumed.step_count == 4
    train(data[4:], [resumed])
    assert resumed.step_count == 8
    for name in ("W_enc", "W_dec", "b_enc", "b_dec"):
        torch.testing.assert_close(
            getattr(resumed.sae, name), getattr(full.sae, name), rtol=1e-6, atol=1e-6
        )
    assert torch.equal(resumed.tokens_since_fired, full.tokens_since_fired)


def test_resume_errors(tmp_path):
    tr = SAETrainer(TopKSAE(8, 24, 3), total_steps=2)
    train(_batches(1), [tr])
    save_training_checkpoint(tr, tmp_path / "c")
    with pytest.raises(ShapeError, match="d_in=8 but the data has d_in=16"):
        resume_trainer(tmp_path / "c", expect_d_in=16)
    with pytest.raises(InputError, match="trainer_state"):
        TopKSAE(8, 24, 3).save(tmp_path / "plain")
        resume_trainer(tmp_path / "plain")
    with pytest.raises(InputError, match="neither"):
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "cfg.json").write_text("{}")
        TopKSAE.load(tmp_path / "empty")
