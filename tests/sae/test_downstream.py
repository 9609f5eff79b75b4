"""Downstream SAE metrics: the SAE spliced at its hook, against the clean model and mean ablation.

The bundled tiny CLIP (``synthetic:tiny``) on its own synthetic pairs; the logits are the
model's (``exp(logit_scale) * cos``), and the temperature-free variant differs.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from tolerance import assert_close
from vlmfast.errors import InputError, ShapeError
from vlmfast.sae import SAETrainer, TopKSAE, TrainConfig, train
from vlmfast.sae.downstream import DownstreamConfig, downstream_metrics
from vlmfast.sae.pair_metrics import bootstrap_recovered, caption_kl, pair_losses, recovered

HOOK = "image.blocks.0.resid_post"
N_PAIRS = 48


@pytest.fixture(scope="module")
def setup():
    import vlmfast as vf
    from vlmfast.data.pairs import read_pairs

    torch.set_num_threads(1)
    pair = vf.load_pair("synthetic:tiny")
    pairs = read_pairs("synthetic:n=48,seed=11", N_PAIRS)
    px = pair.preprocess(pairs.images)
    tok = pair.tokenize(pairs.captions)
    acts = pair.run(images=px, cache=[HOOK]).cache[HOOK]
    return pair, px, tok, acts


class _Identity:
    """A dense "SAE" whose codes are the input and whose decoder returns them."""

    def __init__(self, d: int) -> None:
        self.d_in = self.n_latents = d

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return codes


class _Mean(_Identity):
    """Reconstructs every row as a fixed mean vector."""

    def __init__(self, mean: torch.Tensor) -> None:
        super().__init__(mean.shape[0])
        self.mean = mean

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.mean.to(codes.dtype).expand_as(codes)


def _cfg(**kw) -> DownstreamConfig:
    return DownstreamConfig(n_boot=200, batch_size=16, **kw)


def test_identity_splice_recovers_everything_and_keeps_the_distribution(setup):
    pair, px, tok, acts = setup
    res = downstream_metrics(pair, _Identity(acts.shape[-1]), HOOK, px, tok, config=_cfg())
    assert res.loss == "softmax" and res.logit_bias is None
    assert_close(torch.tensor(res.logit_scale), pair.logit_scale.exp().float())
    assert res.loss_recovered.value == 1.0
    assert res.loss_recovered.ci == (1.0, 1.0)
    assert res.kl_spliced.value == 0.0
    assert res.accuracy_spliced.value == res.accuracy_clean.value
    assert res.kl_mean_ablated.value > 0.01  # the hook matters: the null moves the model
    assert res.loss_mean_ablated.value > res.loss_clean.value
    assert res.positions == {HOOK: "all"}
    d = json.loads(json.dumps(res.to_dict()))
    assert d["loss_recovered"] == {"value": 1.0, "ci": [1.0, 1.0]}


def test_mean_splice_recovers_nothing(setup):
    pair, px, tok, acts = setup
    mean = acts.reshape(-1, acts.shape[-1]).double().mean(0).float()
    res = downstream_metrics(pair, _Mean(mean), HOOK, px, tok, config=_cfg())
    f64 = torch.float64
    # float32 model runs, float64 statistics
    assert_close(
        torch.tensor(res.loss_recovered.value, dtype=f64),
        torch.zeros((), dtype=f64),
        dtype=torch.float32,
    )
    assert_close(
        torch.tensor(res.kl_spliced.value, dtype=f64),
        torch.tensor(res.kl_mean_ablated.value, dtype=f64),
        dtype=torch.float32,
    )
    assert res.accuracy_spliced.value == res.accuracy_mean_ablated.value


def _trained_sae(acts: torch.Tensor) -> TopKSAE:
    rows = acts.reshape(-1, acts.shape[-1]).float()
    torch.manual_seed(0)
    sae = TopKSAE(rows.shape[1], 256, 16, hook=HOOK)
    trainer = SAETrainer(sae, TrainConfig(seed=0, warmup_steps=10), total_steps=150)
    gen = torch.Generator().manual_seed(0)

    def batches():
        while True:
            yield rows[torch.randint(0, rows.shape[0], (128,), generator=gen)]

    train(batches(), [trainer], log_every=1000)
    return sae


def test_trained_sae_recovers_at_most_all_within_its_interval(setup):
    pair, px, tok, acts = setup
    sae = _trained_sae(acts)
    res = downstream_metrics(pair, sae, HOOK, px, tok, config=_cfg())
    rec = res.loss_recovered
    assert rec.value is not None and rec.ci is not None
    assert rec.ci[0] <= rec.value <= rec.ci[1]
    assert rec.ci[0] <= 1.0  # never above 1 except by noise
    assert rec.value > 0.0  # a trained SAE beats the mean
    assert res.kl_spliced.value < res.kl_mean_ablated.value
    for est in (res.kl_spliced, res.accuracy_spliced, res.loss_spliced):
        assert est.ci is not None and est.ci[0] <= est.value <= est.ci[1]

    # the temperature: the plain cosine (a peer's "CE recovered") gives other numbers
    free = downstream_metrics(pair, sae, HOOK, px, tok, config=_cfg(temperature_free=True))
    assert free.temperature_free and free.logit_scale == 1.0
    assert abs(free.kl_spliced.value - res.kl_spliced.value) > 0.1 * res.kl_spliced.value
    assert free.loss_recovered.value != pytest.approx(rec.value, rel=1e-3)
    assert free.loss_clean.value > res.loss_clean.value  # near-uniform without the scale


def test_a_hook_that_does_not_matter_leaves_recovered_undefined(setup):
    pair, px, tok, acts = setup
    # the last image block's patch rows: CLS pooling reads only row 0
    hook = f"image.blocks.{pair.config.image.layers - 1}.resid_post"
    res = downstream_metrics(
        pair, _Mean(torch.zeros(acts.shape[-1])), hook, px, tok, config=_cfg(rows="patches")
    )
    assert res.positions == {hook: "patches"}
    assert res.loss_recovered.value is None and res.loss_recovered.ci is None
    assert res.kl_spliced.value == 0.0
    assert json.loads(json.dumps(res.to_dict()))["loss_recovered"]["value"] is None


def test_bad_inputs_are_named(setup):
    pair, px, tok, acts = setup
    with pytest.raises(ShapeError, match=rf"{HOOK}.*width {acts.shape[-1]}.*d_in is 7"):
        downstream_metrics(pair, _Identity(7), HOOK, px, tok, config=_cfg())
    with pytest.raises(InputError, match="matched pairs"):
        downstream_metrics(pair, _Identity(acts.shape[-1]), HOOK, px, tok[:5], config=_cfg())


def test_pair_metrics_by_hand():
    z = torch.tensor([[2.0, 0.0], [1.0, 3.0]])
    soft = pair_losses(z, "softmax")
    row0 = -math.log(math.exp(2) / (math.exp(2) + 1))
    col0 = -math.log(math.exp(2) / (math.exp(2) + math.exp(1)))
    assert soft[0] == pytest.approx((row0 + col0) / 2)
    sig = pair_losses(z, "sigmoid")
    sp = lambda v: math.log1p(math.exp(v))  # noqa: E731  -log sigmoid(-v) = softplus(v)
    assert sig[0] == pytest.approx(sp(-2.0) + sp(0.0))
    assert sig[1] == pytest.approx(sp(1.0) + sp(-3.0))
    assert caption_kl(z, z).tolist() == [0.0, 0.0]
    assert caption_kl(z, z + 5).tolist() == [0.0, 0.0]  # a bias does not change softmax
    assert caption_kl(z, 2 * z).min() > 0  # a temperature does
    assert recovered(1.0, 1.0, 1.0, 1e-6) is None  # 0 denominator: undefined, never 0
    assert recovered(1.0, 2.0, 3.0, 1e-6) == 0.5
    draws = np.random.default_rng(0).integers(0, 4, (50, 4))
    same = np.ones(4)
    assert bootstrap_recovered(same, same, same, draws, 0.95, 1e-6).value is None


def test_text_hook_splices_the_caption_tokens_only(setup):
    pair, px, tok, _ = setup
    hook = "text.blocks.0.resid_post"
    acts = pair.run(texts=tok, cache=[hook]).cache[hook]
    eot = pair.text.pooled_positions(tok.unsqueeze(-1), tok)
    real = torch.arange(tok.shape[1])[None, :] <= eot[:, None]  # padding left out
    mean = acts[real].double().mean(0).float()
    cfg = _cfg(rows="tokens")
    same = downstream_metrics(pair, _Identity(acts.shape[-1]), hook, px, tok, config=cfg)
    assert same.positions == {hook: "tokens"} and same.loss_recovered.value == 1.0
    null = downstream_metrics(pair, _Mean(mean), hook, px, tok, config=cfg)
    f64 = torch.float64
    assert_close(
        torch.tensor(null.loss_recovered.value, dtype=f64),
        torch.zeros((), dtype=f64),
        dtype=torch.float32,
    )
    eot_only = downstream_metrics(pair, _Mean(mean), hook, px, tok, config=_cfg(rows="eot"))
    assert eot_only.positions == {hook: "eot"}
    assert eot_only.kl_spliced.value != null.kl_spliced.value


def test_siglip_uses_its_sigmoid_loss_with_the_bias():
    testing = pytest.importorskip("vlmfast.models.testing")
    pair = testing.tiny_pair("ViT-SO400M-14-SigLIP-384").eval()
    px, tok = testing.random_pixels(pair, 12), testing.random_pair_tokens(pair, 12)
    hook = "image.blocks.0.resid_post"
    width = pair.run(images=px, cache=[hook]).cache[hook].shape[-1]
    res = downstream_metrics(pair, _Identity(width), hook, px, tok, config=_cfg())
    assert res.loss == "sigmoid" and res.logit_bias == pytest.approx(float(pair.logit_bias))
    assert res.loss_recovered.value == 1.0 and res.kl_spliced.value == 0.0
    assert res.positions == {hook: "all"}  # no CLS token: every row
    free = downstream_metrics(
        pair, _Identity(width), hook, px, tok, config=_cfg(temperature_free=True)
    )
    assert free.loss == "softmax" and free.logit_bias is None
