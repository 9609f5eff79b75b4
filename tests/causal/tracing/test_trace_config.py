"""``trace(..., config=TraceConfig(...))`` is the keyword call."""

from __future__ import annotations

import pytest
import torch

import vlmfast as vf
from vlmfast.models.testing import random_pair_tokens, random_pixels, tiny_pair


def test_a_config_and_keywords_are_the_same_call() -> None:
    pair = tiny_pair("ViT-B-32").eval()
    px, tok = random_pixels(pair, 2, seed=1), random_pair_tokens(pair, 2, seed=2)
    kw = dict(kinds=("resid", "heads"), noise="3x", samples=2, seed=3, null=4)
    by_kw = vf.causal.trace(pair, px, tok, "image", **kw)
    config = vf.causal.TraceConfig(**kw)  # type: ignore[arg-type]
    by_config = vf.causal.trace(pair, px, tok, "image", config=config)
    for kind in ("resid", "heads"):
        assert torch.equal(by_kw.recovery[kind], by_config.recovery[kind])
    assert by_kw.null is not None and by_config.null is not None
    mixed = vf.causal.trace(pair, px, tok, "image", config=config, kinds=("resid",))
    assert set(mixed.recovery) == {"resid"} and config.kinds == ("resid", "heads")
    assert torch.equal(mixed.recovery["resid"], by_kw.recovery["resid"])
    with pytest.raises(TypeError, match="windw"):
        vf.causal.trace(pair, px, tok, "image", windw=3)
