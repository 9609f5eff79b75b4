"""The pipeline's ``[sae] arch`` (and its options) and ``[sae] hooks``: read strictly, and
part of the ``train-sae`` stage key (the stage itself: tests/sae/test_one_recipe.py)."""

from __future__ import annotations

import pytest

from vlmfast.errors import InputError
from vlmfast.pipeline import demo_config, parse_config
from vlmfast.pipeline.runner import all_keys
from vlmfast.pipeline.stages import STAGES


def test_arch_and_hooks_enter_the_stage_key_and_bad_values_are_named() -> None:
    base = all_keys(demo_config(), STAGES)["train-sae"]
    for edit in ("arch = 'batchtopk'", "hooks = ['image.embed']"):
        assert all_keys(parse_config(f"[sae]\n{edit}\n"), STAGES)["train-sae"] != base
    cfg = parse_config("[sae]\narch = 'matryoshka'\ngroups = [64, 64, 128, 256]\n")
    assert (cfg.sae.arch, cfg.sae.groups) == ("matryoshka", [64, 64, 128, 256])
    with pytest.raises(InputError, match=r"sae\.arch must be one of"):
        parse_config("[sae]\narch = 'gated'\n")
    with pytest.raises(InputError, match=r"\[sae\] hooks must be"):
        parse_config("[sae]\nhooks = 'image.embed'\n")
