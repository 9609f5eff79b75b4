"""Interventions change exactly what they should, compose, and batch across rows."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tolerance import PARITY_ULPS, assert_close
from vlmfast.errors import InputError, ShapeError
from vlmfast.models import Ablate, FreezeLayerNorm, Intervention, Noise, Patch, PerRow, Steer
from vlmfast.models.testing import random_pair_tokens, random_pixels

L = 1  # the layer the tests intervene on


def _run(pair: Any, px: Any, *ivs: Any, cache: Any = None, tok: Any = None) -> Any:
    with torch.no_grad():
        return pair.run(images=px, texts=tok, cache=cache, interventions=list(ivs))


def test_zero_ablating_a_head_removes_exactly_its_write(b32_pair: Any) -> None:
    pair = b32_pair
    px = random_pixels(pair, 2)
    z, ho, ao = (f"image.blocks.{L}.attn.{p}" for p in ("z", "head_out", "attn_out"))
    ao = f"image.blocks.{L}.attn_out"
    clean = _run(pair, px, cache=[z, ho, ao])
    ablated = _run(pair, px, Ablate(z, heads=[2]), cache=[z, ao])
    assert torch.all(ablated.cache[z][:, :, 2] == 0)
    torch.testing.assert_close(ablated.cache[z][:, :, [0, 1, 3]], clean.cache[z][:, :, [0, 1, 3]])
    expected = clean.cache[ao] - clean.cache[ho][:, :, 2]
    assert_close(ablated.cache[ao], expected)
    assert not torch.allclose(ablated.image_embeds, clean.image_embeds)


def test_zero_ablating_a_neuron(b32_pair: Any) -> None:
    pair = b32_pair
    px = random_pixels(pair, 2)
    post, out = f"image.blocks.{L}.mlp.post", f"image.blocks.{L}.mlp_out"
    clean = _run(pair, px, cache=[post, out])
    ablated = _run(pair, px, Ablate(post, neurons=7, positions=[0, 3]), cache=[post, out])
    diff = ablated.cache[post] - clean.cache[post]
    assert torch.all(diff[:, [0, 3], 7] == -clean.cache[post][:, [0, 3], 7])
    diff[:, [0, 3], 7] = 0
    assert torch.all(diff == 0)
    w_out = pair.image.blocks[L].mlp.fc2_weight[:, 7]
    expected = clean.cache[out].clone()
    expected[:, [0, 3]] -= clean.cache[post][:, [0, 3], 7, None] * w_out
    assert_close(ablated.cache[out], expected)


def test_patching_with_own_clean_cache_is_a_no_op(b32_pair: Any) -> None:
    pair = b32_pair
    px, tok = random_pixels(pair, 2), random_pair_tokens(pair, 3)
    hooks = [
        "image.blocks.*.attn.z",
        "image.blocks.1.attn.pattern",
        "image.blocks.0.mlp.post",
        "text.blocks.*.resid_mid",
        "text.blocks.1.attn.head_out",
        "image.pooled",
    ]
    clean = _run(pair, px, tok=tok, cache=hooks)
    patched = _run(pair, px, *(Patch(h, source=clean) for h in hooks), tok=tok)
    assert_close(patched.logits, clean.logits)


def test_per_row_patches_equal_separate_forwards(b32_pair: Any) -> None:
    pair = b32_pair
    z = f"image.blocks.{L}.attn.z"
    clean_px, corrupt_px = random_pixels(pair, 2, seed=1), random_pixels(pair, 1, seed=2)
    clean = _run(pair, clean_px, cache=[z])
    heads = [0, 1, 3, 2, -1]  # -1: this row is not patched
    source_rows = [0, 1, 1, 0, 0]
    batch = corrupt_px.expand(len(heads), -1, -1, -1)
    batched = _run(pair, batch, Patch(z, clean, heads=PerRow(heads), source_rows=source_rows))
    for row, (h, s) in enumerate(zip(heads, source_rows)):
        ivs = [] if h < 0 else [Patch(z, clean.cache[z][s : s + 1], heads=[h])]
        single = _run(pair, corrupt_px, *ivs)
        assert_close(batched.image_embeds[row], single.image_embeds[0])


def test_ragged_per_row_selection_and_rows(b32_pair: Any) -> None:
    pair = b32_pair
    post = f"image.blocks.{L}.mlp.post"
    px = random_pixels(pair, 3)
    out = _run(pair, px, Ablate(post, neurons=PerRow([[1, 2], [], [5]])), cache=[post])
    clean = _run(pair, px, cache=[post])
    changed = (out.cache[post] != clean.cache[post]).any(dim=1)  # [B, neurons]
    assert changed[0].nonzero().flatten().tolist() == [1, 2]
    assert not changed[1].any()
    assert changed[2].nonzero().flatten().tolist() == [5]
    only_row1 = _run(pair, px, Ablate(post, rows=[1]), cache=[post])
    assert torch.all(only_row1.cache[post][1] == 0)
    torch.testing.assert_close(only_row1.cache[post][[0, 2]], clean.cache[post][[0, 2]])


def test_mean_and_resample_ablation(b32_pair: Any) -> None:
    pair = b32_pair
    z = f"image.blocks.{L}.attn.z"
    px, ref_px = random_pixels(pair, 2), random_pixels(pair, 5, seed=3)
    ref = _run(pair, ref_px, cache=[z])
    mean = ref.cache[z].mean(0)
    out = _run(pair, px, Ablate(z, heads=1, mode="mean", reference=ref), cache=[z])
    torch.testing.assert_close(out.cache[z][:, :, 1], mean[:, 1].expand(2, -1, -1))
    pre = _run(pair, px, Ablate(z, heads=1, mode="mean", means=mean), cache=[z])
    torch.testing.assert_close(pre.cache[z], out.cache[z])
    r1 = _run(pair, px, Ablate(z, mode="resample", reference=ref, seed=4), cache=[z])
    r2 = _run(pair, px, Ablate(z, mode="resample", reference=ref, seed=4), cache=[z])
    torch.testing.assert_close(r1.cache[z], r2.cache[z])
    for row in r1.cache[z]:  # every row is one of the reference rows
        assert any(torch.equal(row, r) for r in ref.cache[z])
    with pytest.raises(InputError, match="mode"):
        Ablate(z, mode="median")  # type: ignore[arg-type]


def test_steering_adds_alpha_times_direction(b32_pair: Any) -> None:
    pair = b32_pair
    hook = f"image.blocks.{L}.resid_post"
    px = random_pixels(pair, 3)
    direction = torch.randn(pair.config.image.width)
    clean = _run(pair, px, cache=[hook])
    out = _run(pair, px, Steer(hook, direction, alpha=2.5, positions=[0]), cache=[hook])
    diff = out.cache[hook] - clean.cache[hook]
    torch.testing.assert_close(diff[:, 0], (2.5 * direction).expand(3, -1))
    assert torch.all(diff[:, 1:] == 0)
    alphas = torch.tensor([0.0, 1.0, -2.0])
    swept = _run(pair, px, Steer(hook, direction, alpha=alphas), cache=[hook])
    expected = clean.cache[hook] + alphas.view(3, 1, 1) * direction
    torch.testing.assert_close(swept.cache[hook], expected)
    with pytest.raises(ShapeError, match="Steer direction"):
        _run(pair, px, Steer(hook, torch.ones(3)))


def test_noise_is_seeded_and_scaled(b32_pair: Any) -> None:
    pair = b32_pair
    hook = "image.embed_tokens"
    px = random_pixels(pair, 2)
    clean = _run(pair, px, cache=[hook])
    a = _run(pair, px, Noise(hook, std=0.5, seed=1, positions=[1, 2]), cache=[hook])
    b = _run(pair, px, Noise(hook, std=0.5, seed=1, positions=[1, 2]), cache=[hook])
    c = _run(pair, px, Noise(hook, std=0.5, seed=2, positions=[1, 2]), cache=[hook])
    torch.testing.assert_close(a.cache[hook], b.cache[hook])
    assert not torch.allclose(a.cache[hook], c.cache[hook])
    diff = a.cache[hook] - clean.cache[hook]
    assert torch.all(diff[:, [0, 3, 4]] == 0)
    assert 0.3 < float(diff[:, 1:3].std()) < 0.7
    auto = Noise(hook, seed=1)  # 3x the embedding std
    noisy = _run(pair, px, auto, cache=[hook])
    ratio = float((noisy.cache[hook] - clean.cache[hook]).std()) / float(clean.cache[hook].std())
    assert 2.5 < ratio < 3.5
    shared = _run(pair, px[:1].expand(2, -1, -1, -1), Noise(hook, std=1.0, same_noise_per_row=True))
    torch.testing.assert_close(shared.image_embeds[0], shared.image_embeds[1])


def test_zeroing_token_embeddings_keeps_positions(b32_pair: Any) -> None:
    pair = b32_pair
    px = random_pixels(pair, 1)
    out = _run(pair, px, Ablate("image.token_embed", positions=[2]), cache=["image.embed_tokens"])
    torch.testing.assert_close(out.cache["image.embed_tokens"][0, 2], pair.image.pos_embed[2])


def test_frozen_layernorm_matches_clean_run(b32_pair: Any) -> None:
    pair = b32_pair
    px, tok = random_pixels(pair, 2), random_pair_tokens(pair, 2)
    clean = _run(pair, px, tok=tok, cache=FreezeLayerNorm.cache_patterns("all"))
    frozen = _run(pair, px, FreezeLayerNorm(clean, "all"), tok=tok)
    assert_close(frozen.logits, clean.logits)
    # with the final LN frozen, the embedding is linear in the last residual stream
    last = f"image.blocks.{pair.config.image.layers - 1}.resid_post"
    base = _run(pair, px, cache=[last, "image.ln_final.scale"])
    direction = torch.randn(pair.config.image.width)
    freeze = FreezeLayerNorm(base, "ln_final")
    e0 = _run(pair, px, freeze).image_embeds
    e1 = _run(pair, px, freeze, Steer(last, direction, alpha=1.0)).image_embeds
    e2 = _run(pair, px, freeze, Steer(last, direction, alpha=2.0)).image_embeds
    assert_close(e2 - e0, 2 * (e1 - e0), ulps=PARITY_ULPS)
    unfrozen = _run(pair, px, Steer(last, direction, alpha=50.0)).image_embeds
    assert not torch.allclose(unfrozen - e0, 50 * (e1 - e0), atol=1e-3)
    with pytest.raises(InputError, match="cache it in the source run"):
        _run(pair, px, FreezeLayerNorm({}, "ln_final"))


def test_pattern_intervention(b32_pair: Any) -> None:
    pair = b32_pair
    hook = f"text.blocks.{L}.attn.pattern"
    tok = random_pair_tokens(pair, 2)
    with torch.no_grad():
        clean = pair.run(texts=tok, cache=[hook])
        same = pair.run(texts=tok, interventions=[Patch(hook, clean)])
        changed = pair.run(texts=tok, interventions=[Ablate(hook, heads=0, mode="zero")])
    assert_close(same.text_embeds, clean.text_embeds)
    assert not torch.allclose(changed.text_embeds, clean.text_embeds)


class _Double(Intervention):
    """A user-written intervention: doubles the selected elements."""

    def apply(self, name: str, x: torch.Tensor) -> torch.Tensor:
        mask = self.select(name, x)
        return x * 2 if mask is None else torch.where(mask, x * 2, x)


def test_custom_interventions_compose_in_order(siglip_pair: Any) -> None:
    pair = siglip_pair
    hook = "image.pool.attn.z"
    px = random_pixels(pair, 2)
    clean = _run(pair, px, cache=[hook])
    out = _run(pair, px, _Double(hook, heads=[1]), Ablate(hook, heads=[0]), cache=[hook])
    assert torch.all(out.cache[hook][:, :, 0] == 0)
    torch.testing.assert_close(out.cache[hook][:, :, 1], 2 * clean.cache[hook][:, :, 1])
    with pytest.raises(InputError, match="heads= does not apply"):
        _run(pair, px, Ablate("image.pooled", heads=[0]))


def test_capture_grad_gives_the_total_derivative(b32_pair: Any) -> None:
    from vlmfast.models import CaptureGrad

    pair = b32_pair
    hook = f"image.blocks.{L - 1}.resid_post"
    px, tok = random_pixels(pair, 2), random_pair_tokens(pair, 3)
    probe = CaptureGrad("image.blocks.*.resid_post")
    _run(pair, px, probe, tok=tok)  # under no_grad: nothing to differentiate
    with pytest.raises(InputError, match="call backward"):
        _ = probe.grads
    out = pair.run(images=px, texts=tok, interventions=[probe])
    out.logits[:, 0].sum().backward()
    grads = probe.grads
    # reference: patch the same value in as a leaf and differentiate with autograd
    leaf = probe.values[hook].clone().requires_grad_(requires_grad=True)
    ref = pair.run(images=px, texts=tok, interventions=[Patch(hook, leaf)])
    (expected,) = torch.autograd.grad(ref.logits[:, 0].sum(), leaf)
    assert_close(grads[hook], expected)
    torch.testing.assert_close(out.logits, ref.logits)


def test_per_row_bool_masks(b32_pair: Any) -> None:
    pair = b32_pair
    z = f"image.blocks.{L}.attn.z"
    px = random_pixels(pair, 2)
    mask = torch.tensor([[True, False, False, True], [False, False, False, False]])
    out = _run(pair, px, Ablate(z, heads=PerRow(mask)), cache=[z])
    clean = _run(pair, px, cache=[z])
    assert torch.all(out.cache[z][0, :, [0, 3]] == 0)
    torch.testing.assert_close(out.cache[z][0, :, [1, 2]], clean.cache[z][0, :, [1, 2]])
    torch.testing.assert_close(out.cache[z][1], clean.cache[z][1])
    with pytest.raises(ShapeError, match="PerRow"):
        _run(pair, px, Ablate(z, heads=PerRow([0, 1, 2])))
