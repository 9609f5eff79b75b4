"""TopKSAE model, AuxK against a hand-written formula, trainer behaviour, metrics, bad input."""

from __future__ import annotations

import pytest
import torch

from tolerance import assert_close
from vlmfast.errors import InputError, ShapeError
from vlmfast.sae import (
    RunningMetrics,
    SAEConfig,
    SAETrainer,
    TopKSAE,
    TrainConfig,
    auxk_loss,
    clean_batch,
    geometric_median,
    train,
)


def _data(n=64, d=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) * 2 + 1


def test_init_encoder_is_the_scaled_decoder_and_decoder_unit_norm():
    """Encoder rows are the decoder's directions times ``encoder_init_norm`` (1/sqrt(3)
    by default, sparsify's row norm; 1.0 ties them)."""
    sae = TopKSAE(12, 40, 4)
    assert sae.cfg.encoder_init_norm == pytest.approx(3**-0.5)
    assert_close(sae.W_enc, sae.W_dec * 3**-0.5)
    assert_close(sae.W_dec.norm(dim=1), torch.ones(40))
    assert_close(sae.W_enc.norm(dim=1), torch.full((40,), 3**-0.5))
    tied = TopKSAE(12, 40, 4, encoder_init_norm=1.0)
    assert torch.equal(tied.W_enc, tied.W_dec) and torch.equal(tied.W_dec, sae.W_dec)
    for bad in (0.0, -1.0, float("nan"), float("inf"), True):
        with pytest.raises(InputError, match="encoder_init_norm must be a positive number"):
            TopKSAE(12, 40, 4, encoder_init_norm=bad)
    values, indices = sae.encode(_data())
    assert values.shape == indices.shape == (64, 4)
    assert (values >= 0).all()
    assert sae.decode(values, indices).shape == (64, 12)


def test_bad_configs_and_shapes():
    with pytest.raises(InputError, match="k=9 exceeds n_latents=8"):
        TopKSAE(4, 8, 9)
    sae = TopKSAE(4, 8, 2)
    with pytest.raises(ShapeError, match="d_in"):
        sae.encode(torch.zeros(3, 5))
    with pytest.raises(InputError, match="indices"):
        sae.decode(torch.ones(1, 2), torch.tensor([[0, 8]]))


def test_b_dec_init_geometric_median_and_mean():
    x = _data(200, 5)
    x[:20] += 100.0  # outliers move the mean, not the median
    sae = TopKSAE(5, 10, 2)
    sae.init_from_batch(x)
    med = geometric_median(x.double())
    torch.testing.assert_close(sae.b_dec.double(), med, rtol=1e-5, atol=1e-5)
    # the geometric median minimises the summed distance
    base = (x.double() - med).norm(dim=1).sum()
    for shift in (0.05, -0.05):
        assert (x.double() - (med + shift)).norm(dim=1).sum() > base
    sae2 = TopKSAE(5, 10, 2, b_dec_init="mean")
    sae2.init_from_batch(x)
    torch.testing.assert_close(sae2.b_dec, x.mean(0))


def test_auxk_matches_hand_written_formula():
    torch.manual_seed(0)
    d, f, k, k_aux = 6, 20, 3, 4
    sae = TopKSAE(d, f, k, k_aux=k_aux)
    with torch.no_grad():
        sae.b_dec.copy_(torch.randn(d))
        sae.b_enc.copy_(torch.randn(f) * 0.1)
        sae.W_enc.add_(0.3 * torch.randn(f, d))
    x = torch.randn(10, d)
    dead = torch.zeros(f, dtype=torch.bool)
    dead[[1, 4, 7, 8, 13, 19]] = True
    out = sae.forward_train(x, dead)
    loss = auxk_loss(x - out.recon, out.aux_recon)
    loss.backward()
    got = {n: p.grad.clone() for n, p in sae.named_parameters()}

    # by hand: dense pre-activations, top-k_aux among dead latents, no b_dec, detached residual
    W_enc, b_enc = (
        sae.W_enc.detach().clone().requires_grad_(),
        sae.b_enc.detach().clone().requires_grad_(),
    )
    W_dec, b_dec = (
        sae.W_dec.detach().clone().requires_grad_(),
        sae.b_dec.detach().clone().requires_grad_(),
    )
    pre = (x - b_dec) @ W_enc.T + b_enc
    z = torch.zeros_like(pre)
    top = pre.detach().topk(k, dim=1).indices
    z = z.scatter(1, top, torch.relu(pre.gather(1, top)))
    recon = z @ W_dec + b_dec
    masked = pre.detach().masked_fill(~dead, float("-inf"))
    aux_idx = masked.topk(k_aux, dim=1).indices
    z_aux = torch.zeros_like(pre).scatter(1, aux_idx, torch.relu(pre.gather(1, aux_idx)))
    aux_recon = z_aux @ W_dec  # no b_dec
    residual = (x - recon).detach()
    expected = ((aux_recon - residual) ** 2).sum() / ((residual - residual.mean(0)) ** 2).sum()
    expected.backward()
    torch.testing.assert_close(loss, expected)
    assert set(out.aux_indices.flatten().tolist()) <= set(dead.nonzero().flatten().tolist())
    for name, leaf in (("W_enc", W_enc), ("b_enc", b_enc), ("W_dec", W_dec), ("b_dec", b_dec)):
        torch.testing.assert_close(got[name], leaf.grad, rtol=1e-4, atol=1e-6, msg=name)
    # the detached residual: only dead decoder rows get AuxK gradient
    alive_rows = (~dead).nonzero().flatten()
    assert torch.all(got["W_dec"][alive_rows] == 0)
    # adding b_dec (the public trainers' bug) would give a different loss
    wrong = ((aux_recon.detach() + b_dec.detach() - residual) ** 2).sum() / (
        (residual - residual.mean(0)) ** 2
    ).sum()
    assert not torch.isclose(wrong, expected)


def test_step_keeps_unit_norm_and_removes_parallel_grad():
    sae = TopKSAE(12, 40, 4)
    trainer = SAETrainer(sae, TrainConfig(lr=1e-2, warmup_steps=1), total_steps=5)
    x = _data()
    trainer.step(x)
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(40))
    out = sae.forward_train(x)
    ((out.recon - x) ** 2).sum().backward()
    sae.remove_parallel_grads_()
    parallel = (sae.W_dec.grad * sae.W_dec).sum(1)
    assert (parallel.abs() / sae.W_dec.grad.norm(dim=1).clamp_min(1e-12)).max() < 1e-5


def test_training_is_reproducible_and_sweeps_share_batches():
    def run():
        torch.manual_seed(0)
        saes = [TopKSAE(12, 40, 4, seed=1), TopKSAE(12, 80, 8, seed=2)]
        trainers = [
            SAETrainer(s, TrainConfig(lr=lr), total_steps=6, name=f"s{i}")
            for i, (s, lr) in enumerate(zip(saes, (1e-3, 3e-3)))
        ]
        train((_data(seed=i) for i in range(100)), trainers, log_every=3)
        return saes, trainers

    a, ta = run()
    b, _ = run()
    for s1, s2 in zip(a, b):
        assert torch.equal(s1.W_dec, s2.W_dec) and torch.equal(s1.b_enc, s2.b_enc)
    assert [t.step_count for t in ta] == [6, 6]
    assert [t.tokens_seen for t in ta] == [6 * 64, 6 * 64]


def test_lr_schedule_warmup_and_decay():
    sae = TopKSAE(4, 8, 2)
    t = SAETrainer(sae, TrainConfig(lr=1.0, warmup_steps=4, decay_start=0.5), total_steps=10)
    lrs = []
    for step in range(10):
        t.step_count = step
        lrs.append(t.current_lr())
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert lrs[5] == 1.0 and lrs[6] < 1.0 and lrs[9] < lrs[8]


def test_nonfinite_rows_error_names_rows_or_skip():
    x = _data(10, 4)
    x[3, 1] = float("nan")
    x[7, 0] = float("inf")
    with pytest.raises(InputError, match="rows 3, 7"):
        clean_batch(x, "error")
    kept, dropped = clean_batch(x, "skip")
    assert dropped == 2 and kept.shape == (8, 4)
    sae = TopKSAE(4, 8, 2)
    tr = SAETrainer(sae, TrainConfig(), total_steps=2)
    logs = train([x, x], [tr], nan_policy="skip", log_every=1)
    assert logs[0].skipped_rows == 4


def test_d_in_mismatch_in_training():
    tr = SAETrainer(TopKSAE(4, 8, 2), total_steps=1)
    with pytest.raises(ShapeError, match="d_in=4"):
        tr.step(torch.zeros(3, 5))


def test_running_metrics_fvu_uses_vector_mean():
    x = _data(50, 6).double() + 10.0
    recon = x + 0.1 * torch.randn_like(x)
    m = RunningMetrics(6, 10)
    vals = torch.ones(50, 2)
    idx = torch.zeros(50, 2, dtype=torch.long)
    idx[:, 1] = 1
    m.update(x[:20], recon[:20], vals[:20], idx[:20])
    m.update(x[20:], recon[20:], vals[20:], idx[20:])
    expected = ((recon - x) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert m.fvu() == pytest.approx(float(expected), rel=1e-9)
    assert m.l0() == 2.0
    assert m.dead_fraction() == pytest.approx(0.8)
    assert m.dense_fraction() == pytest.approx(0.2)
    hist = m.firing_histogram(bins=8)
    assert sum(hist["counts"]) == 10


def test_input_scaling_is_folded_at_save(tmp_path):
    x = _data(128, 12) * 50
    sae = TopKSAE(12, 40, 4, input_scaling=True)
    tr = SAETrainer(sae, TrainConfig(lr=1e-3), total_steps=3)
    for _ in range(3):
        tr.step(x)
    assert float(sae.input_scale) != 1.0
    recon = sae(x)
    vals, idx = sae.encode(x)
    sae.save(tmp_path / "s")
    loaded = TopKSAE.load(tmp_path / "s")
    assert float(loaded.input_scale) == 1.0
    torch.testing.assert_close(loaded(x), recon, rtol=1e-4, atol=1e-3)
    v2, i2 = loaded.encode(x)
    assert torch.equal(i2, idx)
    torch.testing.assert_close(v2, vals, rtol=1e-4, atol=1e-3)


def test_sae_config_validation():
    with pytest.raises(InputError, match="b_dec_init"):
        SAEConfig(d_in=4, n_latents=8, k=2, b_dec_init="median")
    assert SAEConfig(d_in=768, n_latents=100, k=2).aux_k == 100
    assert SAEConfig(d_in=768, n_latents=16384, k=2).aux_k == 384
