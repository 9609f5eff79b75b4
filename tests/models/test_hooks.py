"""Hook names, shapes, internal consistency of cached values, name errors, run_from."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tolerance import assert_close
from vlmfast.errors import HookNameError, InputError, ShapeError
from vlmfast.models import Intervention, resolve_hooks
from vlmfast.models.testing import random_pair_tokens, random_pixels

DESIGN_POINTS = [
    "embed_tokens",
    "blocks.{L}.resid_pre",
    "blocks.{L}.attn.q",
    "blocks.{L}.attn.k",
    "blocks.{L}.attn.v",
    "blocks.{L}.attn.pattern",
    "blocks.{L}.attn.z",
    "blocks.{L}.attn.head_out",
    "blocks.{L}.attn_out",
    "blocks.{L}.resid_mid",
    "blocks.{L}.mlp.pre",
    "blocks.{L}.mlp.post",
    "blocks.{L}.mlp_out",
    "blocks.{L}.resid_post",
    "ln_final",
    "pooled",
    "embed",
]


@pytest.mark.parametrize("fixture", ["b32_pair", "siglip_pair"])
def test_every_design_hook_exists(fixture: str, request: pytest.FixtureRequest) -> None:
    pair = request.getfixturevalue(fixture)
    points = pair.hook_points()
    assert len(points) == len(set(points))
    for tower in ("image", "text"):
        for layer in range(pair.config.tower(tower).layers):
            for p in DESIGN_POINTS:
                assert f"{tower}.{p.format(L=layer)}" in points
    pool = [p for p in points if p.startswith("image.pool.attn.")]
    if pair.config.image.pool == "map":
        assert {"image.pool.attn.z", "image.pool.attn.pattern", "image.pool.attn.head_out"} <= set(
            pool
        )
    else:
        assert pool == []


def test_hook_shapes(b32_pair: Any) -> None:
    pair = b32_pair
    c_img, c_txt = pair.config.image, pair.config.text
    b, t_img, t_txt = 3, c_img.n_tokens, c_txt.context_length
    with torch.no_grad():
        out = pair.run(random_pixels(pair, b), random_pair_tokens(pair, 2), cache=["*"])
    cache = out.cache
    d, h, dh = c_img.width, c_img.heads, c_img.head_dim
    assert cache["image.embed_tokens"].shape == (b, t_img, d)
    assert cache["image.blocks.1.resid_pre"].shape == (b, t_img, d)
    assert cache["image.blocks.1.attn.q"].shape == (b, t_img, h, dh)
    assert cache["image.blocks.1.attn.z"].shape == (b, t_img, h, dh)
    assert cache["image.blocks.1.attn.head_out"].shape == (b, t_img, h, d)
    assert cache["image.blocks.1.attn.pattern"].shape == (b, h, t_img, t_img)
    assert cache["image.blocks.1.mlp.post"].shape == (b, t_img, c_img.mlp_width)
    assert cache["image.blocks.1.ln1.scale"].shape == (b, t_img, 1)
    assert cache["image.ln_final"].shape == (b, t_img, d)
    assert cache["image.pooled"].shape == (b, d)
    assert cache["image.embed"].shape == (b, c_img.embed_dim)
    assert cache["text.blocks.0.attn.pattern"].shape == (2, c_txt.heads, t_txt, t_txt)
    assert cache["text.embed"].shape == (2, c_txt.embed_dim)


def test_cached_values_are_consistent(b32_pair: Any) -> None:
    pair = b32_pair
    with torch.no_grad():
        out = pair.run(random_pixels(pair, 2), random_pair_tokens(pair, 3), cache=["*"])
    c = out.cache
    for tower in ("image", "text"):
        blk = pair.tower(tower).blocks[1]
        p = f"{tower}.blocks.1"
        attn_out = c[f"{p}.attn.head_out"].sum(2) + blk.attn.out_bias
        assert_close(attn_out, c[f"{p}.attn_out"])
        torch.testing.assert_close(c[f"{p}.resid_pre"] + c[f"{p}.attn_out"], c[f"{p}.resid_mid"])
        torch.testing.assert_close(c[f"{p}.resid_mid"] + c[f"{p}.mlp_out"], c[f"{p}.resid_post"])
        torch.testing.assert_close(c[f"{tower}.blocks.0.resid_post"], c[f"{p}.resid_pre"])
        pattern = c[f"{p}.attn.pattern"]
        torch.testing.assert_close(pattern.sum(-1), torch.ones_like(pattern.sum(-1)))
        z = torch.einsum("bhqk,bkhd->bqhd", pattern, c[f"{p}.attn.v"])
        assert_close(z, c[f"{p}.attn.z"])
    text_pattern = c["text.blocks.0.attn.pattern"]
    assert torch.all(text_pattern.triu(1) == 0)  # causal
    torch.testing.assert_close(c["image.embed"], out.image_embeds)
    torch.testing.assert_close(c["text.embed"], out.text_embeds)


def test_sdpa_and_manual_attention_agree(b32_pair: Any) -> None:
    pair = b32_pair
    px, tok = random_pixels(pair, 2), random_pair_tokens(pair, 2)
    with torch.no_grad():
        fast = pair.run(px, tok, cache=["*.attn.z"])
        slow = pair.run(px, tok, cache=["*.attn.z", "*.attn.pattern"])
    for name in fast.cache:
        assert_close(fast.cache[name], slow.cache[name])


def test_globs_and_tower_filtering(b32_pair: Any) -> None:
    pair = b32_pair
    names = resolve_hooks(["image.blocks.*.attn.z"], pair.hook_points())
    assert names == [f"image.blocks.{i}.attn.z" for i in range(pair.config.image.layers)]
    with torch.no_grad():
        out = pair.run(texts=random_pair_tokens(pair, 2), cache=["*.resid_pre"])
    assert out.logits is None and out.image_embeds is None
    assert set(out.cache) == {f"text.blocks.{i}.resid_pre" for i in range(pair.config.text.layers)}


def test_unknown_hook_lists_close_matches(b32_pair: Any) -> None:
    pair = b32_pair
    px = random_pixels(pair, 1)
    with pytest.raises(HookNameError, match=r"image\.blocks\.1\.attn\.z"):
        pair.run(images=px, cache=["image.blocks.1.attn.zz"])
    with pytest.raises(HookNameError, match="did you mean"):
        pair.run(images=px, cache=["image.block.0.resid_pre"])
    with pytest.raises(HookNameError, match="matches no hook"):
        pair.run(images=px, cache=["image.blocks.*.attn.nope"])
    with pytest.raises(HookNameError, match="unknown hook point"):
        pair.run(images=px, interventions=[Intervention("image.mlp.post")])
    with pytest.raises(InputError, match="no text inputs"):
        pair.run(images=px, cache=["text.blocks.0.resid_pre"])


class _BadShape(Intervention):
    def apply(self, name: str, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1]


def test_shape_errors_name_hook_and_shapes(b32_pair: Any) -> None:
    from vlmfast.models import Patch

    pair = b32_pair
    px = random_pixels(pair, 2)
    with pytest.raises(
        ShapeError, match=r"image\.blocks\.0\.resid_post.*\(2, 10, 64\).*\(2, 1, 64\)"
    ):
        pair.run(images=px, interventions=[_BadShape("image.blocks.0.resid_post")])
    with pytest.raises(
        ShapeError, match=r"image\.blocks\.0\.attn\.z.*\(2, 5, 4, 16\).*\(2, 10, 4, 16\)"
    ):
        pair.run(
            images=px,
            interventions=[Patch("image.blocks.0.attn.z", source=torch.zeros(2, 5, 4, 16))],
        )
    with pytest.raises(ShapeError, match="images must be"):
        pair.run(images=torch.zeros(1, 3, 10, 10))
    with pytest.raises(ShapeError, match="texts must be"):
        pair.run(texts=torch.zeros(1, 99, dtype=torch.long))


def test_run_from_continues_the_forward(b32_pair: Any) -> None:
    pair = b32_pair
    px, tok = random_pixels(pair, 3), random_pair_tokens(pair, 3)
    with torch.no_grad():
        full = pair.run(px, tok, cache=["*.blocks.*.resid_pre"])
        for layer in range(pair.config.image.layers + 1):
            name = f"image.blocks.{layer}.resid_pre"
            resid = full.cache.get(name)
            if resid is None:  # layer == layers: the head only, from the last resid_post
                resid = pair.run(px, cache=["image.blocks.1.resid_post"]).cache[
                    "image.blocks.1.resid_post"
                ]
            out = pair.image.run_from(layer, resid)
            assert_close(out.embed, full.image_embeds)
        text = pair.text.run_from(
            1, full.cache["text.blocks.1.resid_pre"], tokens=tok, cache=["text.pooled"]
        )
        assert_close(text.embed, full.text_embeds)
        assert set(text.cache) == {"text.pooled"}
    with pytest.raises(InputError, match="needs tokens"):
        pair.text.run_from(1, full.cache["text.blocks.1.resid_pre"])
    with pytest.raises(InputError, match="out of range"):
        pair.image.run_from(7, full.cache["image.blocks.1.resid_pre"])
