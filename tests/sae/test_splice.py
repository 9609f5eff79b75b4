"""Splicing an SAE reconstruction into a (tiny random) CLIP and measuring the change."""

from __future__ import annotations

import pytest
import torch

from vlmfast.sae import TopKSAE

testing = pytest.importorskip("vlmfast.models.testing")


def _exact_sae(width: int) -> TopKSAE:
    """x = relu(x) - relu(-x): a [I; -I] dictionary with k = n_latents reconstructs exactly."""
    sae = TopKSAE(width, 2 * width, 2 * width, b_dec_init="zeros")
    eye = torch.eye(width)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye]))
        sae.W_dec.copy_(torch.cat([eye, -eye]))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def test_exact_sae_leaves_the_model_unchanged_and_a_bad_one_does_not():
    from vlmfast.sae.splice import evaluate_splice

    pair = testing.tiny_pair("ViT-B-32")
    px = testing.random_pixels(pair, 6)
    tok = testing.random_pair_tokens(pair, 6)
    hook = "image.blocks.0.resid_post"
    width = pair.run(images=px, cache=[hook]).cache[hook].shape[-1]
    report = evaluate_splice(pair, _exact_sae(width), hook, px, tok)
    assert report.image_embed_cos == pytest.approx(1.0, abs=1e-5)
    assert report.text_embed_cos == pytest.approx(1.0, abs=1e-6)
    assert report.i2t_acc_spliced == report.i2t_acc_clean
    assert report.matched_logit_spliced == pytest.approx(report.matched_logit_clean, rel=1e-4)

    rough = TopKSAE(width, 16, 1, b_dec_init="zeros")
    bad = evaluate_splice(pair, rough, hook, px, tok)
    assert bad.image_embed_cos < 0.999
    assert bad.text_embed_cos == pytest.approx(1.0, abs=1e-6)

    embed_dim = pair.run(images=px).image_embeds.shape[-1]
    joint = evaluate_splice(pair, _exact_sae(embed_dim), "joint.embed", px, tok)
    assert joint.image_embed_cos == pytest.approx(1.0, abs=1e-5)
    assert joint.text_embed_cos == pytest.approx(1.0, abs=1e-5)
