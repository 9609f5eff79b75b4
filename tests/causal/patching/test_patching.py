"""Batched patch sweeps equal the serial one-forward-per-component loop."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import vlmfast as vf
from tolerance import assert_close, ratio_scale
from vlmfast.causal import LogitDiff, MatchedScore, patch_heads, patch_sweep
from vlmfast.errors import InputError, ShapeError

transformers = pytest.importorskip("transformers")


def _randomize(model: Any) -> Any:
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "logit_scale":
                p.fill_(1.5)
            elif name == "logit_bias":
                p.fill_(-0.5)
            else:
                p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    return model


@pytest.fixture(scope="module")
def clip_pair(tmp_path_factory: pytest.TempPathFactory) -> Any:
    cfg = transformers.CLIPConfig(
        text_config=dict(
            hidden_size=24,
            intermediate_size=40,
            num_hidden_layers=2,
            num_attention_heads=4,
            vocab_size=50,
            max_position_embeddings=9,
            bos_token_id=48,
            eos_token_id=49,
            pad_token_id=0,
        ),
        vision_config=dict(
            hidden_size=30,
            intermediate_size=44,
            num_hidden_layers=3,
            num_attention_heads=6,
            image_size=24,
            patch_size=8,
        ),
        projection_dim=16,
    )
    path: Path = tmp_path_factory.mktemp("clip")
    _randomize(transformers.CLIPModel(cfg)).save_pretrained(path)
    return vf.load_pair(f"hf:{path}")


@pytest.fixture(scope="module")
def siglip_pair(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tower = dict(hidden_size=24, intermediate_size=40, num_hidden_layers=2, num_attention_heads=3)
    cfg = transformers.SiglipConfig(
        text_config=tower | dict(vocab_size=50, max_position_embeddings=7),
        vision_config=tower | dict(image_size=16, patch_size=8),
    )
    path: Path = tmp_path_factory.mktemp("siglip")
    _randomize(transformers.SiglipModel(cfg)).save_pretrained(path)
    return vf.load_pair(f"hf:{path}")


def _clip_inputs(seed: int, n: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    px = torch.randn(n, 3, 24, 24, generator=gen)
    tok = torch.randint(1, 47, (n, 9), generator=gen)
    for row in range(n):
        end = 3 + (row * 2 + seed) % 6
        tok[row, 0], tok[row, end] = 48, 49
        tok[row, end + 1 :] = 0
    return px, tok


def _both(pair: Any, **kwargs: Any) -> torch.Tensor:
    batched = patch_sweep(pair, method="batched", **kwargs)
    serial = patch_sweep(pair, method="serial", **kwargs)
    assert_close(batched, serial)
    return batched


def test_image_heads_ragged_chunks(clip_pair: Any) -> None:
    px, tok = _clip_inputs(0)
    src_px, src_tok = _clip_inputs(1)
    # 3 rows, 6 heads, max_rows=12 -> 4 heads per forward: chunks of 4 and 2 heads
    out = _both(
        clip_pair,
        images=px,
        texts=tok,
        source={"images": src_px, "texts": src_tok},
        metric="score",
        component="heads",
        tower="image",
        max_rows=12,
    )
    assert out.shape == (3, 6)
    assert out.std() > 0, "patches must change the score"


def test_patch_heads_wrapper_and_one_row_per_forward(clip_pair: Any) -> None:
    px, tok = _clip_inputs(0)
    src_px, _ = _clip_inputs(1)
    full = patch_heads(clip_pair, px, tok, {"images": src_px}, "logit_diff")
    tiny = patch_heads(clip_pair, px, tok, {"images": src_px}, "logit_diff", max_rows=1)
    assert_close(full, tiny)


def test_text_heads(clip_pair: Any) -> None:
    px, tok = _clip_inputs(0)
    _, src_tok = _clip_inputs(1)
    out = _both(
        clip_pair,
        images=px,
        texts=tok,
        source={"texts": src_tok},
        metric="logit_diff",
        component="heads",
        tower="text",
        max_rows=5,
    )
    assert out.shape == (2, 4)


def test_neuron_subset_and_layers(clip_pair: Any) -> None:
    px, tok = _clip_inputs(0)
    src_px, _ = _clip_inputs(1)
    out = _both(
        clip_pair,
        images=px,
        texts=tok,
        source={"images": src_px},
        metric="alignment",
        component="neurons",
        tower="image",
        layers=[2, 0],
        indices=[0, 7, 43],
        max_rows=7,
    )
    assert out.shape == (2, 3)


def test_positions_text_tower(clip_pair: Any) -> None:
    px, tok = _clip_inputs(0)
    _, src_tok = _clip_inputs(2)
    out = _both(
        clip_pair,
        images=px,
        texts=tok,
        source={"texts": src_tok},
        metric="score",
        component="positions",
        tower="text",
    )
    assert out.shape == (2, 9)


def test_source_cache_and_normalize(clip_pair: Any) -> None:
    px, tok = _clip_inputs(0)
    src_px, _ = _clip_inputs(1)
    run = clip_pair.run(images=src_px, texts=tok, cache=["image.blocks.*.attn.z"])
    by_inputs = patch_heads(clip_pair, px, tok, {"images": src_px}, normalize="recovery")
    by_cache = patch_heads(clip_pair, px, tok, run, normalize="recovery")
    raw = patch_heads(clip_pair, px, tok, run)
    assert_close(patch_heads(clip_pair, px, tok, {"images": src_px}), raw)
    delta = patch_heads(clip_pair, px, tok, run, normalize="delta")
    base = MatchedScore()(clip_pair.logits(px, tok))
    source = MatchedScore()(clip_pair.logits(src_px, tok))
    # A recovery divides by (source - base), a difference of two scores that nearly cancel
    # here: it inherits the scores' rounding amplified by 1 / |source - base|.
    assert_close(
        by_inputs,
        by_cache,
        scale=ratio_scale(torch.stack([raw, base.expand_as(raw)]), source - base),
    )
    wrong_head = by_cache.clone()
    wrong_head[:, [0, 1]] = wrong_head[:, [1, 0]]
    with pytest.raises(AssertionError):  # a wrong head patched still fails
        assert_close(by_inputs, wrong_head, scale=ratio_scale(raw, source - base))
    assert_close(delta, raw - base, scale=raw)


def test_self_patch_is_a_no_op(clip_pair: Any) -> None:
    px, tok = _clip_inputs(0)
    out = patch_heads(clip_pair, px, tok, {"images": px}, "score")
    base = MatchedScore()(clip_pair.logits(px, tok))
    assert_close(out, base.expand_as(out))


def test_siglip_map_pool_and_foils(siglip_pair: Any) -> None:
    gen = torch.Generator().manual_seed(3)
    px, src_px = torch.randn(2, 3, 3, 16, 16, generator=gen)
    tok = torch.randint(0, 50, (4, 7), generator=gen)  # 3 captions + 1 hard foil
    metric = LogitDiff(foils=(3, 0, 3))
    out = _both(
        siglip_pair,
        images=px,
        texts=tok,
        source={"images": src_px},
        metric=metric,
        component="heads",
        tower="image",
        max_rows=4,
    )
    assert out.shape == (2, 3)
    out = _both(
        siglip_pair,
        images=px,
        texts=tok[:3],
        source={"texts": tok[1:]},
        metric="score",
        component="heads",
        tower="text",
        max_rows=4,
    )
    assert out.shape == (2, 3)


def test_bad_arguments(clip_pair: Any) -> None:
    px, tok = _clip_inputs(0)
    src = {"images": px}
    with pytest.raises(InputError, match="both images= and texts="):
        patch_sweep(clip_pair, px, None, src)
    with pytest.raises(InputError, match="tower"):
        patch_sweep(clip_pair, px, tok, src, tower="audio")
    with pytest.raises(InputError, match="layers"):
        patch_sweep(clip_pair, px, tok, src, layers=[7])
    with pytest.raises(InputError, match="metric"):
        patch_sweep(clip_pair, px, tok, src, metric="nope")
    with pytest.raises(InputError, match="'texts'"):
        patch_sweep(clip_pair, px, tok, src, tower="text")
    with pytest.raises(InputError, match="hook point"):
        patch_sweep(clip_pair, px, tok, src, component="heads", point="mlp.post")
    with pytest.raises(ShapeError, match="captions"):
        patch_sweep(clip_pair, px, tok[:2], src)
    with pytest.raises(InputError, match=r"no 'image\.blocks\.0\.attn\.z'"):
        patch_sweep(clip_pair, px, tok, {"image.blocks.0.resid_pre": px})


def test_patch_config_is_the_keyword_form(clip_pair: Any) -> None:
    from vlmfast.causal import PatchConfig

    px, tok = _clip_inputs(0)
    src = {"images": _clip_inputs(1)[0], "texts": tok}
    cfg = PatchConfig(component="neurons", layers=[1], indices=[0, 3], normalize="delta")
    by_config = patch_sweep(clip_pair, px, tok, src, config=cfg)
    by_keywords = patch_sweep(
        clip_pair, px, tok, src, component="neurons", layers=[1], indices=[0, 3], normalize="delta"
    )
    assert torch.equal(by_config, by_keywords)
    # keywords given with a config replace its fields
    assert patch_sweep(clip_pair, px, tok, src, config=cfg, indices=[3]).shape == (1, 1)
    with pytest.raises(TypeError, match="unexpected keyword arguments \\['componnet'\\]"):
        patch_sweep(clip_pair, px, tok, src, componnet="heads")
