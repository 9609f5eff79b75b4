"""``vlmfast models``: the spec list and ``--hooks`` tables."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlmfast.cli import main
from vlmfast.cli.models import fold_blocks

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tower = dict(hidden_size=16, intermediate_size=24, num_hidden_layers=3, num_attention_heads=2)
    cfg = transformers.SiglipConfig(
        text_config=tower | dict(vocab_size=40, max_position_embeddings=6),
        vision_config=tower | dict(image_size=16, patch_size=8),
    )
    path: Path = tmp_path_factory.mktemp("siglip")
    transformers.SiglipModel(cfg).save_pretrained(path)
    return path


def test_lists_specs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for spec in (
        "open_clip:ViT-B-32",
        "open_clip:ViT-SO400M-14-SigLIP-384",
        "hf:",
        "synthetic:tiny",
    ):
        assert spec in out
    assert "siglip" in out and "clip" in out


def test_all_lists_open_clip_archs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--all"]) == 0
    assert "open_clip:ViT-B-16-SigLIP" in capsys.readouterr().out


def test_hooks_table(siglip_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--hooks", f"hf:{siglip_dir}"]) == 0
    out = capsys.readouterr().out
    lines = {
        line.split()[0]: line.split(None, 1)[1]
        for line in out.splitlines()
        if line.startswith(("image.", "text."))
    }
    assert lines["image.blocks.{0-2}.attn.z"] == "[B, 4, 2, 8]"
    assert lines["image.blocks.{0-2}.attn.pattern"] == "[B, 2, 4, 4]"
    assert lines["text.blocks.{0-2}.mlp.post"] == "[B, 6, 24]"
    assert lines["image.embed"] == "[B, 16]"
    assert any(k.startswith("image.pool.attn.") for k in lines)
    assert "image: 3 blocks, width 16, 2 heads x 8" in out


def test_hooks_names(siglip_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--hooks", f"hf:{siglip_dir}", "--names"]) == 0
    names = capsys.readouterr().out.split()
    assert "image.blocks.2.attn.head_out" in names
    assert "text.blocks.0.resid_pre" in names


def test_bad_spec_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--hooks", f"hf:{tmp_path / 'missing'}"]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_fold_blocks() -> None:
    names = [
        "image.embed_tokens",
        "image.blocks.0.attn.z",
        "image.blocks.1.attn.z",
        "image.blocks.0.mlp.post",
        "image.embed",
    ]
    assert fold_blocks(names) == [
        ("image.embed_tokens", "image.embed_tokens"),
        ("image.blocks.{0-1}.attn.z", "image.blocks.0.attn.z"),
        ("image.blocks.{0}.mlp.post", "image.blocks.0.mlp.post"),
        ("image.embed", "image.embed"),
    ]
