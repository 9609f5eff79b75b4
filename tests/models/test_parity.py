"""Hooked towers reproduce open_clip's logits and embeddings (fp32, random weights)."""

from __future__ import annotations

import pytest
import torch

from tolerance import PARITY_ULPS, assert_close
from vlmfast.models import HookedPair, from_open_clip
from vlmfast.models.registry import OPEN_CLIP_TESTED
from vlmfast.models.testing import build_open_clip, random_tokens, tiny_config, tiny_open_clip


def _check(model: torch.nn.Module, pair: HookedPair, n_img: int = 3, n_txt: int = 4) -> None:
    s = pair.config.image.image_size
    px = torch.randn(n_img, 3, s, s)
    tok = random_tokens(n_txt, pair.config.text.context_length, pair.config.text.vocab_size)
    with torch.no_grad():
        ref_logits = model.get_logits(px, tok)[0]
        ref_img, ref_txt = model.encode_image(px), model.encode_text(tok)
        out = pair.run(images=px, texts=tok)
    assert out.logits is not None
    assert_close(out.image_embeds, ref_img, ulps=PARITY_ULPS)
    assert_close(out.text_embeds, ref_txt, ulps=PARITY_ULPS)
    assert_close(out.logits, ref_logits, ulps=PARITY_ULPS)
    assert_close(pair.logits(px, tok), ref_logits, ulps=PARITY_ULPS)


@pytest.mark.parametrize("arch", OPEN_CLIP_TESTED)
def test_parity_tiny_family(arch: str) -> None:
    model = tiny_open_clip(arch)
    pair = from_open_clip(model)
    _check(model, pair)


def test_family_structure_is_kept() -> None:
    quick = from_open_clip(tiny_open_clip("ViT-B-32-quickgelu")).config
    assert quick.image.act == quick.text.act == "quick_gelu"
    sig = from_open_clip(tiny_open_clip("ViT-SO400M-14-SigLIP-384")).config
    assert sig.image.pool == "map" and not sig.image.class_token
    assert sig.image.head_dim == 72 and sig.image.mlp_width == 4304
    assert sig.text.pool == "last" and not sig.text.causal and sig.text.proj_bias
    assert sig.logit_bias
    clip = from_open_clip(tiny_open_clip("ViT-B-32")).config
    assert clip.text.pool == "eot" and clip.text.causal and clip.image.pre_norm


def test_parity_mean_pool_and_post_pool_ln() -> None:
    cfg = tiny_config("ViT-B-32")
    cfg["vision_cfg"].update(pool_type="avg", final_ln_after_pool=True)
    model = build_open_clip(cfg)
    pair = from_open_clip(model)
    assert pair.config.image.pool == "mean" and pair.config.image.final_ln == "post_pool"
    _check(model, pair)


def test_parity_with_every_hook_active() -> None:
    """Caching everything (manual attention, LN scales, head_out) changes nothing."""
    model = tiny_open_clip("ViT-SO400M-14-SigLIP-384")
    pair = from_open_clip(model)
    px = torch.randn(2, 3, 56, 56)
    tok = random_tokens(3)
    with torch.no_grad():
        ref = model.get_logits(px, tok)[0]
        out = pair.run(images=px, texts=tok, cache=["*"])
    assert out.logits is not None
    assert_close(out.logits, ref, ulps=PARITY_ULPS)
    assert set(out.cache) == set(pair.hook_points())


def test_from_state_dict_round_trip() -> None:
    pair = from_open_clip(tiny_open_clip("ViT-B-16"))
    again = HookedPair.from_state_dict(pair.config, pair.internal_state_dict())
    px, tok = torch.randn(2, 3, 48, 48), random_tokens(2)
    with torch.no_grad():
        torch.testing.assert_close(again.logits(px, tok), pair.logits(px, tok), atol=0, rtol=0)


def test_dtype_and_device_arguments() -> None:
    pair = from_open_clip(tiny_open_clip("ViT-B-32"), dtype=torch.float64)
    assert pair.dtype == torch.float64
    px, tok = torch.randn(2, 3, 96, 96), random_tokens(2)
    with torch.no_grad():
        assert pair.logits(px, tok).dtype == torch.float64


@pytest.mark.slow
def test_parity_full_vit_b32() -> None:
    import open_clip

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32").eval()
    pair = from_open_clip(model)
    assert pair.config.image.width == 768 and pair.config.image.layers == 12
    px = torch.randn(2, 3, 224, 224)
    tok = open_clip.tokenize(["a photo of a red cube", "two dogs left of a cat", "x"])
    with torch.no_grad():
        ref = model.get_logits(px, tok)[0]
        assert_close(pair.logits(px, tok), ref, ulps=PARITY_ULPS)
        assert_close(pair.encode_image(px), model.encode_image(px), ulps=PARITY_ULPS)
        assert_close(pair.encode_text(tok), model.encode_text(tok), ulps=PARITY_ULPS)
        # the tokenizer of open_clip:ViT-B-32 is CLIP's BPE
        torch.testing.assert_close(pair.tokenize(["a photo of a red cube"]), tok[:1])


def test_parity_layer_scale_eos_pool_and_odd_image_size() -> None:
    """LayerScale is folded into the projections; EOS pooling; 50 px with 16 px patches."""
    cfg = tiny_config("ViT-B-16")
    cfg["vision_cfg"].update(ls_init_value=0.5, image_size=50)
    cfg["text_cfg"].update(ls_init_value=0.3, pool_type="eos", eos_id=7)
    model = build_open_clip(cfg)
    pair = from_open_clip(model)
    assert pair.config.text.pool == "eos" and pair.config.text.eos_token_id == 7
    assert pair.config.image.n_tokens == 1 + 3 * 3
    tok = random_tokens(3)
    tok[0, 4] = 7
    tok[1, 2] = 7
    px = torch.randn(2, 3, 50, 50)
    with torch.no_grad():
        ref = model.get_logits(px, tok)[0]
        assert_close(pair.logits(px, tok), ref, ulps=PARITY_ULPS)
