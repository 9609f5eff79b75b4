"""load_pair specs, pretrained tags and paths, offline errors, unsupported models, inputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import vlmfast as vf
from tolerance import PARITY_ULPS, assert_close
from vlmfast.errors import InputError, ModelLoadError
from vlmfast.models import HookedPair, PairConfig, TowerConfig, from_open_clip
from vlmfast.models.registry import OPEN_CLIP_TESTED
from vlmfast.models.testing import build_open_clip, random_tokens, tiny_config


@pytest.fixture
def tiny_arch(tmp_path: Path) -> str:
    """Registers a tiny ViT-B-32-shaped config with open_clip under a new name."""
    import open_clip

    cfg = tiny_config("ViT-B-32")
    cfg["text_cfg"].update(vocab_size=49408)  # CLIP's tokenizer works with it
    path = tmp_path / "vlmfast-tiny-test.json"
    path.write_text(json.dumps(cfg))
    open_clip.add_model_config(path)
    return "vlmfast-tiny-test"


def test_open_clip_random_init_and_checkpoint_path(tiny_arch: str, tmp_path: Path) -> None:
    import open_clip

    pair = vf.load_pair(f"open_clip:{tiny_arch}")
    assert isinstance(pair, HookedPair) and pair.spec == f"open_clip:{tiny_arch}"
    assert pair.config.image.width == 64
    model = open_clip.create_model(tiny_arch)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    ckpt = tmp_path / "weights.pt"
    torch.save(model.state_dict(), ckpt)
    loaded = vf.load_pair(f"open_clip:{tiny_arch}", pretrained=str(ckpt))
    px, tok = torch.randn(2, 3, 96, 96), loaded.tokenize(["a red cube", "a dog"])
    with torch.no_grad():
        ref = model.eval().get_logits(px, tok)[0]
        assert_close(loaded.logits(px, tok), ref, ulps=PARITY_ULPS)


def test_open_clip_preprocess_and_tokenize(tiny_arch: str) -> None:
    from PIL import Image

    pair = vf.load_pair(f"open_clip:{tiny_arch}", dtype=torch.float64)
    images = [Image.new("RGB", (40, 60), "red"), Image.new("RGB", (120, 90), "blue")]
    px = pair.preprocess(images)
    assert px.shape == (2, 3, 96, 96) and px.dtype == torch.float64
    tok = pair.tokenize(["a photo", "two dogs"])
    assert tok.dtype == torch.long and tok.shape == (2, 12)
    with torch.no_grad():
        out = pair.run(images=images, texts=["a photo", "two dogs"])  # PIL and str accepted
        torch.testing.assert_close(out.logits, pair.logits(px, tok))


def test_unknown_arch_and_tags(tiny_arch: str) -> None:
    with pytest.raises(ModelLoadError, match="did you mean ViT-B-32"):
        vf.load_pair("open_clip:ViT-B-33")
    with pytest.raises(ModelLoadError, match="unknown pretrained tag"):
        vf.load_pair("open_clip:ViT-B-32", pretrained="no-such-tag")
    with pytest.raises(ModelLoadError, match="no such checkpoint file"):
        vf.load_pair("open_clip:ViT-B-32", pretrained="/nonexistent/ckpt.pt")
    with pytest.raises(ModelLoadError, match="unknown model source"):
        vf.load_pair("timm:vit")
    with pytest.raises(ModelLoadError, match="must look like"):
        vf.load_pair("ViT-B-32")


def test_offline_tag_says_how_to_pass_a_local_checkpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    import open_clip.factory

    def offline(*args: Any, **kwargs: Any) -> str:
        raise OSError("Name or service not known")

    monkeypatch.setattr(open_clip.factory, "download_pretrained", offline)
    monkeypatch.setattr(open_clip.factory, "download_pretrained_from_hf", offline)
    with pytest.raises(ModelLoadError, match="pass its local path"):
        vf.load_pair("open_clip:ViT-B-32", pretrained="openai")


def test_synthetic_tiny_dispatch() -> None:
    try:
        pair = vf.load_pair("synthetic:tiny")
    except ModelLoadError as err:  # the bundled model (module or weights) is not in this build
        assert "synthetic" in str(err)
    else:
        assert isinstance(pair, HookedPair)


def test_unsupported_open_clip_models_are_named() -> None:
    cfg = tiny_config("ViT-B-32")
    cfg["vision_cfg"].update(layers=[1, 1, 1, 1], width=16, image_size=64)
    with pytest.raises(ModelLoadError, match="ModifiedResNet"):
        from_open_clip(build_open_clip(cfg))
    cfg = tiny_config("ViT-B-32")
    cfg["vision_cfg"]["qk_norm"] = True
    with pytest.raises(ModelLoadError, match="custom blocks"):
        from_open_clip(build_open_clip(cfg))


def test_config_validation_and_round_trip() -> None:
    pair = from_open_clip(build_open_clip(tiny_config("ViT-SO400M-14-SigLIP-384")))
    again = PairConfig.from_dict(json.loads(json.dumps(pair.config.to_dict())))
    assert again == pair.config
    with pytest.raises(InputError, match="pool"):
        TowerConfig(
            modality="text", width=8, layers=1, heads=1, head_dim=8, mlp_width=8, pool="cls"
        )
    with pytest.raises(InputError, match="smaller than patch_size"):
        TowerConfig(
            modality="image", width=8, layers=1, heads=1, head_dim=8, mlp_width=8, image_size=8
        )
    with pytest.raises(InputError, match="eos_token_id"):
        TowerConfig(
            modality="text", width=8, layers=1, heads=1, head_dim=8, mlp_width=8, pool="eos"
        )
    with pytest.raises(InputError, match="unknown TowerConfig fields"):
        TowerConfig.from_dict({"modality": "image", "wdth": 3})


def test_state_dict_errors_name_the_key() -> None:
    pair = from_open_clip(build_open_clip(tiny_config("ViT-B-32")))
    sd = pair.internal_state_dict()
    sd.pop("text.blocks.0.attn.q.bias")
    with pytest.raises(ModelLoadError, match=r"missing \['text.blocks.0.attn.q.bias'\]"):
        HookedPair.from_state_dict(pair.config, sd)
    sd = pair.internal_state_dict()
    sd["image.pos_embed"] = torch.zeros(3, 3)
    with pytest.raises(vf.errors.ShapeError, match=r"image\.pos_embed"):
        HookedPair.from_state_dict(pair.config, sd)


def test_token_ids_are_checked() -> None:
    pair = from_open_clip(build_open_clip(tiny_config("ViT-B-32")))
    tok = random_tokens(1)
    tok[0, 0] = 5000
    with pytest.raises(InputError, match="outside the vocabulary"):
        pair.encode_text(tok)


@pytest.mark.slow
def test_every_listed_open_clip_arch_converts() -> None:
    """``supported_open_clip_archs`` only lists configs the converter accepts (meta tensors)."""
    import open_clip

    from vlmfast.models import convert_open_clip, supported_open_clip_archs

    archs = supported_open_clip_archs()
    assert set(OPEN_CLIP_TESTED) <= set(archs)
    for arch in archs:
        with torch.device("meta"):
            model = open_clip.create_model(arch, device="meta")
        config, _ = convert_open_clip(model, name=arch)
        assert config.image.layers > 0, arch
