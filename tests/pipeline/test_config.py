"""The pipeline config: strict TOML sections, clear errors, every shipped config validates."""

from __future__ import annotations

from pathlib import Path

import pytest

from vlmfast.errors import InputError
from vlmfast.pipeline import (
    STAGE_NAMES,
    PipelineConfig,
    demo_config,
    demo_config_text,
    load_config,
    parse_config,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_unknown_key_names_the_key_the_section_and_the_allowed_keys() -> None:
    with pytest.raises(InputError) as err:
        parse_config("[sae]\nn_latent = 64\n", where="x.toml")
    msg = str(err.value)
    assert "x.toml" in msg and "'n_latent'" in msg and "[sae]" in msg
    assert "n_latents" in msg and "steps" in msg  # the allowed keys


def test_unknown_section_names_the_allowed_sections() -> None:
    with pytest.raises(InputError, match=r"unknown section \[modle\].*model"):
        parse_config("[modle]\nspec = 'synthetic:tiny'\n")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[sae]\nk = 'big'\n", r"\[sae\] k must be int"),
        ("[sae]\nk = 64\nn_latents = 32\n", "exceeds sae.n_latents"),
        ("[sae]\nsteps = 0\n", "sae.steps must be >= 1"),
        ("[run]\nstages = ['cache', 'plot']\n", r"run.stages entries must be among"),
        ("[attribute]\ncorrupt = 'blur'\n", "attribute.corrupt must be one of"),
        ("[trace]\nnoise = 'loud'\n", "trace.noise"),
        ("[score]\nthreshold = true\n", r"\[score\] threshold must be float"),
        ("sae = 3\n", r"\[sae\] must be a table"),
        ("[sae\n", "not valid TOML"),
    ],
)
def test_bad_values_are_named(text: str, match: str) -> None:
    with pytest.raises(InputError, match=match):
        parse_config(text)


def test_defaults_ints_for_floats_and_stage_order() -> None:
    cfg = parse_config("[intervene]\nalpha = 4\n[run]\nstages = ['score', 'cache']\n")
    assert cfg.intervene.alpha == 4.0 and isinstance(cfg.intervene.alpha, float)
    assert cfg.run.stages == ["cache", "score"]  # run order, whatever the file's order
    assert parse_config("").to_dict() == PipelineConfig().to_dict()
    assert parse_config("").run.stages == list(STAGE_NAMES)


def test_missing_file_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no such file"):
        load_config(tmp_path / "nope.toml")


def test_bundled_demo_config_is_the_example() -> None:
    assert (EXAMPLES / "demo.toml").read_text() == demo_config_text()
    cfg = demo_config()
    assert cfg.model.spec == "synthetic:tiny" and cfg.run.stages == list(STAGE_NAMES)
    assert cfg.score.paper_claims["object"] == 1842  # carried as the paper's claim


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.toml")), ids=lambda p: p.name)
def test_every_example_config_validates(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.hash() == load_config(path).hash()
    assert set(cfg.run.stages) <= set(STAGE_NAMES)


def test_examples_include_the_paper_settings() -> None:
    names = {p.name for p in EXAMPLES.glob("*.toml")}
    assert {"demo.toml", "clip_b32_coco.toml", "siglip_so400m_coco.toml"} <= names
    for name in ("clip_b32_coco.toml", "siglip_so400m_coco.toml"):
        cfg = load_config(EXAMPLES / name)
        assert (cfg.sae.k, cfg.sae.n_latents) == (32, 65536), name
        assert cfg.model.device == "cuda", name
