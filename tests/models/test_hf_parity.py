"""``load_pair("hf:<dir>")`` matches transformers' CLIPModel / SiglipModel on random weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import vlmfast as vf
from tolerance import PARITY_ULPS, assert_close
from vlmfast.errors import ModelLoadError

transformers = pytest.importorskip("transformers")


def _clip_config(**text_overrides: Any) -> Any:
    text = (
        dict(
            hidden_size=32,
            intermediate_size=80,
            num_hidden_layers=2,
            num_attention_heads=4,
            vocab_size=99,
            max_position_embeddings=12,
            bos_token_id=97,
            eos_token_id=98,
            pad_token_id=0,
        )
        | text_overrides
    )
    vision = dict(
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=6,
        image_size=32,
        patch_size=8,
    )
    return transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=24)


def _siglip_config(
    width: int = 32, heads: int = 4, mlp: int = 64, act: str = "gelu_pytorch_tanh"
) -> Any:
    text = dict(
        hidden_size=width,
        intermediate_size=mlp,
        num_hidden_layers=2,
        num_attention_heads=heads,
        vocab_size=101,
        max_position_embeddings=10,
        hidden_act=act,
    )
    vision = dict(
        hidden_size=width,
        intermediate_size=mlp,
        num_hidden_layers=2,
        num_attention_heads=heads,
        image_size=28,
        patch_size=7,
        hidden_act=act,
    )
    return transformers.SiglipConfig(text_config=text, vision_config=vision)


def _save(model: Any, path: Path) -> str:
    model.save_pretrained(path)
    return f"hf:{path}"


def _randomize(model: Any) -> Any:
    """HF zero-inits biases and LN; fill every parameter with noise so parity covers them."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "logit_scale":
                p.fill_(2.3)
            elif name == "logit_bias":
                p.fill_(-1.7)
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=gen))
    return model.eval()


def _clip_tokens(vocab: int, ctx: int, eos: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(2)
    tok = torch.randint(1, eos - 1, (3, ctx), generator=gen)
    lengths = [4, ctx, 7]
    for row, n in enumerate(lengths):
        tok[row, 0] = eos - 1
        tok[row, n - 1] = eos
        tok[row, n:] = 0
    return tok


def _compare(pair: Any, model: Any, px: torch.Tensor, tok: torch.Tensor) -> None:
    with torch.no_grad():
        ref = model(input_ids=tok, pixel_values=px)
        logits = pair.logits(px, tok)
        img = pair.encode_image(px)
        txt = pair.encode_text(tok)
    assert_close(img, _unnormalised(model, "image", px), ulps=PARITY_ULPS)
    assert_close(txt, _unnormalised(model, "text", tok), ulps=PARITY_ULPS)
    assert_close(logits, ref.logits_per_image, ulps=PARITY_ULPS)


def _unnormalised(model: Any, tower: str, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        if tower == "image":
            out = model.get_image_features(pixel_values=x)
        else:
            out = model.get_text_features(input_ids=x)
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def test_clip_parity(tmp_path: Path) -> None:
    model = _randomize(transformers.CLIPModel(_clip_config()))
    pair = vf.load_pair(_save(model, tmp_path / "clip"))
    px = torch.randn(2, 3, 32, 32)
    _compare(pair, model, px, _clip_tokens(99, 12, 98))
    assert pair.spec == f"hf:{tmp_path / 'clip'}"


def test_clip_gelu_and_legacy_eos(tmp_path: Path) -> None:
    """eos_token_id=2 (old configs) pools at argmax(id); gelu activation."""
    cfg = _clip_config(eos_token_id=2, hidden_act="gelu")
    cfg.vision_config.hidden_act = "gelu"
    model = _randomize(transformers.CLIPModel(cfg))
    pair = vf.load_pair(_save(model, tmp_path / "clip"))
    _compare(pair, model, torch.randn(2, 3, 32, 32), _clip_tokens(99, 12, 98))


def test_siglip_parity(tmp_path: Path) -> None:
    model = _randomize(transformers.SiglipModel(_siglip_config()))
    pair = vf.load_pair(_save(model, tmp_path / "siglip"))
    tok = torch.randint(0, 101, (3, 10), generator=torch.Generator().manual_seed(3))
    _compare(pair, model, torch.randn(2, 3, 28, 28), tok)
    assert pair.config.logit_bias


def test_siglip_so400m_odd_sizes(tmp_path: Path) -> None:
    """d_head = 72 and MLP width 4304 (SigLIP-SO400M), other sizes kept small."""
    cfg = _siglip_config(width=144, heads=2, mlp=4304)
    cfg.text_config.num_hidden_layers = 1
    cfg.vision_config.num_hidden_layers = 1
    model = _randomize(transformers.SiglipModel(cfg))
    pair = vf.load_pair(_save(model, tmp_path / "so400m"))
    assert pair.config.image.head_dim == 72
    assert pair.config.image.mlp_width == 4304
    tok = torch.randint(0, 101, (2, 10), generator=torch.Generator().manual_seed(4))
    _compare(pair, model, torch.randn(2, 3, 28, 28), tok)


def test_hooks_cover_both_towers(tmp_path: Path) -> None:
    model = _randomize(transformers.SiglipModel(_siglip_config()))
    pair = vf.load_pair(_save(model, tmp_path / "siglip"))
    names = pair.hook_points()
    assert "image.blocks.1.attn.z" in names
    assert "text.blocks.0.mlp.post" in names
    assert any(n.startswith("image.pool.attn.") for n in names)


def test_missing_dir_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        vf.load_pair(f"hf:{tmp_path / 'nope'}")


def test_dir_without_config(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"config\.json"):
        vf.load_pair(f"hf:{tmp_path}")


def test_uncached_hub_id_says_how_to_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match=r"hf:/path/to/dir"):
        vf.load_pair("hf:nobody-here/not-a-model")


def test_unsupported_model_type(tmp_path: Path) -> None:
    cfg = transformers.BertConfig(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        vocab_size=50,
    )
    transformers.BertModel(cfg).save_pretrained(tmp_path / "bert")
    with pytest.raises(ModelLoadError, match="'bert' is not supported"):
        vf.load_pair(f"hf:{tmp_path / 'bert'}")


def test_tokenize_without_tokenizer_files_raises(tmp_path: Path) -> None:
    model = _randomize(transformers.CLIPModel(_clip_config()))
    pair = vf.load_pair(_save(model, tmp_path / "clip"))
    with pytest.raises(ModelLoadError, match="no tokenizer files"):
        pair.tokenize(["a red cube"])


def test_preprocess_fallback_uses_config_size(tmp_path: Path) -> None:
    from PIL import Image

    model = _randomize(transformers.SiglipModel(_siglip_config()))
    pair = vf.load_pair(_save(model, tmp_path / "siglip"))
    px = pair.preprocess([Image.new("RGB", (40, 30), (255, 0, 0))])
    assert px.shape == (1, 3, 28, 28)
    # SigLIP normalises with mean = std = 0.5: pure red -> (1, -1, -1)
    torch.testing.assert_close(px[0, :, 5, 5], torch.tensor([1.0, -1.0, -1.0]))


def test_processor_files_are_used(tmp_path: Path) -> None:
    from PIL import Image

    model = _randomize(transformers.CLIPModel(_clip_config()))
    path = tmp_path / "clip"
    model.save_pretrained(path)
    proc = transformers.CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    proc.save_pretrained(path)
    assert json.loads((path / "preprocessor_config.json").read_text())["crop_size"]["height"] == 32
    pair = vf.load_pair(f"hf:{path}")
    image = Image.new("RGB", (50, 40), (10, 200, 30))
    px = pair.preprocess([image])
    torch.testing.assert_close(px, proc(images=[image], return_tensors="pt")["pixel_values"])


def test_siglip_tokenizer_from_spiece_model(tmp_path: Path) -> None:
    """A directory with spiece.model (as SigLIP repos ship) tokenizes to max_length ids."""
    spm = pytest.importorskip("sentencepiece")
    sentences = ["a red cube left of a blue ball", "two green cones", "a small yellow box"] * 20
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_prefix=str(tmp_path / "spiece"),
        vocab_size=25,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        minloglevel=2,
    )
    path = tmp_path / "siglip"
    model = _randomize(transformers.SiglipModel(_siglip_config()))
    model.save_pretrained(path)
    ref = transformers.SiglipTokenizer(vocab_file=str(tmp_path / "spiece.model"))
    ref.save_pretrained(path)
    pair = vf.load_pair(f"hf:{path}")
    tok = pair.tokenize(["a red cube", "two green cones left of a box"])
    expected = ref(
        ["a red cube", "two green cones left of a box"],
        padding="max_length",
        max_length=10,
        truncation=True,
        return_tensors="pt",
    )["input_ids"]
    assert tok.shape == (2, 10)
    torch.testing.assert_close(tok, expected)
    assert pair.logits(torch.randn(1, 3, 28, 28), tok).shape == (1, 2)
