"""Checkpoints of every SAE architecture: the SAELens layout (threshold archs as SAELens'
``jumprelu`` with a ``threshold`` tensor), bit-exact encode after a round trip, exact
resume of the threshold state, and clear errors when config and tensors disagree."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import vlmfast as vf
from tolerance import assert_close
from vlmfast.errors import InputError, ShapeError
from vlmfast.sae import SAETrainer, TopKSAE, TrainConfig
from vlmfast.sae import train as train_saes
from vlmfast.sae.archs import build_sae
from vlmfast.sae.checkpoint import load_sae, resume_trainer, save_training_checkpoint
from vlmfast.sae.config import ARCHS, SAEConfig

D, F, K = 12, 40, 3


def _trained(arch: str, tmp_path, steps: int = 12):
    torch.manual_seed(0)
    x = torch.randn(256, D) * 2 + 0.5
    sae = build_sae(SAEConfig(D, F, K, arch=arch))
    trainer = SAETrainer(sae, TrainConfig(lr=1e-2, warmup_steps=2), total_steps=2 * steps)
    train_saes((x[i * 16 : i * 16 + 64] for i in range(steps)), [trainer])
    out = save_training_checkpoint(trainer, tmp_path / arch)
    return sae, trainer, out, x


@pytest.mark.parametrize("arch", ARCHS)
def test_round_trip_encodes_bit_exactly(arch, tmp_path):
    sae, _, path, x = _trained(arch, tmp_path)
    values, indices = sae.encode(x)
    for back in (TopKSAE.load(path), load_sae(path), vf.sae.load(str(path))):
        assert back.cfg.arch == arch and back.cfg.to_dict() == sae.cfg.to_dict()
        v, i = back.encode(x)
        assert torch.equal(v, values) and torch.equal(i, indices)
        assert torch.equal(back(x), sae(x))


@pytest.mark.parametrize("arch", ["batchtopk", "matryoshka", "jumprelu"])
def test_threshold_archs_are_saved_as_saelens_jumprelu(arch, tmp_path):
    sae, _, path, x = _trained(arch, tmp_path)
    cfg = json.loads((path / "cfg.json").read_text())
    assert cfg["architecture"] == "jumprelu" and cfg["vlmfast"]["arch"] == arch
    t = load_file(str(path / "sae_weights.safetensors"))
    assert t["threshold"].shape == (F,)
    # SAELens' JumpReLU encode: relu(pre) * (pre > threshold), pre = (x - b_dec) W_enc + b_enc
    pre = (x - t["b_dec"]) @ t["W_enc"] + t["b_enc"]
    saelens = torch.relu(pre) * (pre > t["threshold"])
    values, indices = sae.encode(x)
    ours = torch.zeros(x.shape[0], F).scatter_add_(1, indices, values)
    assert_close(ours, saelens)


@pytest.mark.parametrize("arch", ["batchtopk", "jumprelu"])
def test_resume_restores_the_threshold_state(arch, tmp_path):
    sae, _, path, _ = _trained(arch, tmp_path)
    resumed = resume_trainer(path)
    assert resumed.sae.threshold_updates == sae.threshold_updates
    assert torch.equal(resumed.sae.threshold_tensor(), sae.threshold_tensor())
    if arch == "jumprelu":
        assert torch.equal(resumed.sae.l0_weight, sae.l0_weight)


def _rewrite(path, *, cfg=None, drop=(), **tensors):
    weights = path / "sae_weights.safetensors"
    t = {k: v for k, v in load_file(str(weights)).items() if k not in drop}
    save_file({**t, **tensors}, str(weights))
    if cfg is not None:
        data = json.loads((path / "cfg.json").read_text())
        data["vlmfast"].update(cfg)
        (path / "cfg.json").write_text(json.dumps(data))


def test_config_and_tensors_that_disagree_are_named(tmp_path):
    _, _, jr, _ = _trained("jumprelu", tmp_path)
    _rewrite(jr, drop=("threshold",))
    with pytest.raises(InputError, match=r"sae_weights.safetensors.*'jumprelu'.*no 'threshold'"):
        TopKSAE.load(jr)
    _rewrite(jr, threshold=torch.ones(F + 1))
    with pytest.raises(ShapeError, match=r"sae_weights.safetensors.*'threshold' is \[41\]"):
        TopKSAE.load(jr)
    _, _, topk, _ = _trained("topk", tmp_path)
    _rewrite(topk, threshold=torch.ones(F))
    with pytest.raises(InputError, match=r"'threshold' tensor but cfg.json says arch 'topk'"):
        TopKSAE.load(topk)
    _, _, btk, _ = _trained("batchtopk", tmp_path)
    _rewrite(btk, threshold=torch.arange(F).float())
    with pytest.raises(InputError, match="one global threshold"):
        TopKSAE.load(btk)
    _, _, mat, _ = _trained("matryoshka", tmp_path)
    _rewrite(mat, cfg={"groups": [10, 10]})
    with pytest.raises(
        InputError, match=r"cfg.json.*groups \[10, 10\] sum to 20, not n_latents=40"
    ):
        TopKSAE.load(mat)
    _rewrite(mat, cfg={"arch": "gated", "groups": None})
    with pytest.raises(InputError, match=r"cfg.json.*arch must be one of"):
        TopKSAE.load(mat)


def _saelens_jumprelu(path, **cfg_fields):
    g = torch.Generator().manual_seed(3)
    t = {
        "W_enc": torch.randn(D, F, generator=g),
        "W_dec": torch.randn(F, D, generator=g),
        "b_enc": torch.randn(F, generator=g) * 0.3,
        "b_dec": torch.randn(D, generator=g),
        "threshold": torch.rand(F, generator=g) * 2,
    }
    path.mkdir()
    save_file(t, str(path / "sae_weights.safetensors"))
    cfg = {"architecture": "jumprelu", "d_in": D, "d_sae": F, "apply_b_dec_to_input": True,
           "normalize_activations": "none", "metadata": {"sae_lens_version": "6.54.12",
           "hook_name": "blocks.3.hook_resid_post"}, **cfg_fields}  # fmt: skip
    (path / "cfg.json").write_text(json.dumps(cfg))
    return t


@pytest.mark.parametrize("b_dec_in", [True, False])
def test_a_saelens_jumprelu_directory_loads_as_jumprelu(tmp_path, b_dec_in):
    path = tmp_path / "saelens_jumprelu"
    t = _saelens_jumprelu(path, apply_b_dec_to_input=b_dec_in)
    x = torch.randn(20, D, generator=torch.Generator().manual_seed(4))
    pre = (x - t["b_dec"] * b_dec_in) @ t["W_enc"] + t["b_enc"]
    expected = torch.relu(pre) * (pre > t["threshold"])
    loaders = [lambda: vf.sae.load(f"saelens:{path}"), lambda: vf.sae.load(str(path))]
    if b_dec_in:  # the plain reader has no b_dec folding
        loaders.append(lambda: TopKSAE.load(path))
    for load in loaders:
        sae = load()
        assert sae.cfg.arch == "jumprelu" and sae.cfg.hook == "blocks.3.hook_resid_post"
        values, indices = sae.encode(x)
        ours = torch.zeros(20, F).scatter_add_(1, indices, values)
        assert_close(ours, expected)
        assert_close(sae(x), ours @ t["W_dec"] + t["b_dec"])


def test_saelens_jumprelu_that_vlmfast_cannot_match_is_refused(tmp_path):
    _saelens_jumprelu(tmp_path / "a", rescale_acts_by_decoder_norm=True)
    with pytest.raises(InputError, match="'jumprelu' with rescale_acts_by_decoder_norm"):
        vf.sae.load(f"saelens:{tmp_path / 'a'}")
    _saelens_jumprelu(tmp_path / "b", normalize_activations="layer_norm")
    with pytest.raises(InputError, match="normalize_activations='layer_norm'"):
        vf.sae.load(str(tmp_path / "b"))


def test_vlmfast_threshold_dirs_load_through_the_saelens_prefix(tmp_path):
    sae, _, path, x = _trained("matryoshka", tmp_path)
    back = vf.sae.load(f"saelens:{path}")
    assert back.cfg.arch == "matryoshka"
    assert torch.equal(back.encode(x)[0], sae.encode(x)[0])
