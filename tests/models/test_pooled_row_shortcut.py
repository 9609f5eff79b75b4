"""The last block's pooled-row shortcut equals the plain forward, and steps aside for hooks."""

from __future__ import annotations

import pytest
import torch

import vlmfast as vf
from tolerance import assert_close
from vlmfast.models.config import TowerConfig
from vlmfast.models.testing import random_tokens
from vlmfast.models.towers import Tower, build_tower


def _tower(**kw: object) -> Tower:
    base: dict[str, object] = dict(width=24, layers=3, heads=3, head_dim=8, mlp_width=40)
    base.update(kw)
    torch.manual_seed(0)
    tower = build_tower(TowerConfig(**base))  # type: ignore[arg-type]
    for p in tower.parameters():  # non-trivial LayerNorm and biases
        p.data.add_(0.05 * torch.randn_like(p))
    return tower


def _inputs(tower: Tower) -> torch.Tensor:
    cfg = tower.config
    if cfg.modality == "image":
        return torch.randn(5, 3, cfg.image_size, cfg.image_size)
    tok = random_tokens(5, cfg.context_length, cfg.vocab_size, seed=1)
    if cfg.pool == "eos":
        tok[:, 2] = int(cfg.eos_token_id or 0)  # first EOS before the EOT
        tok[4, 2] = 3  # one row without an EOS: pooled at position 0
    return tok


CASES = {
    "image-cls": dict(modality="image", image_size=32, patch_size=8, pre_norm=True),
    "image-cls-post-ln": dict(modality="image", image_size=32, patch_size=8, final_ln="post_pool"),
    "text-eot-causal": dict(modality="text", vocab_size=50, context_length=9, pool="eot"),
    "text-last-bidirectional": dict(
        modality="text", vocab_size=50, context_length=9, pool="last", causal=False
    ),
    "text-eos": dict(
        modality="text", vocab_size=50, context_length=9, pool="eos", eos_token_id=7, causal=False
    ),
    "text-first-no-final-ln": dict(
        modality="text", vocab_size=50, context_length=9, pool="first", final_ln="none"
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_shortcut_matches_the_full_forward(case: str) -> None:
    tower = _tower(**CASES[case])
    inputs = _inputs(tower)
    with torch.no_grad():
        embed, pooled = tower(inputs)
        ref_embed, ref_pooled = tower(inputs, all_rows=True)
    assert_close(embed, ref_embed)
    assert_close(pooled, ref_pooled)


@pytest.mark.parametrize("case", ["image-cls", "text-eot-causal"])
def test_shortcut_gradients_match(case: str) -> None:
    tower = _tower(**CASES[case])
    inputs = _inputs(tower)
    grads = []
    for all_rows in (False, True):
        tower.zero_grad()
        tower(inputs, all_rows=all_rows)[0].pow(2).sum().backward()
        grads.append([p.grad.clone() for p in tower.parameters() if p.grad is not None])
    assert len(grads[0]) == len(grads[1])
    for a, b in zip(*grads):
        assert_close(a, b)


def test_causal_mask_is_applied_at_the_pooled_row() -> None:
    """Changing tokens after the EOT leaves the causal tower's EOT output unchanged."""
    tower = _tower(**CASES["text-eot-causal"])
    tok = torch.tensor([[1, 2, 49, 0, 0, 0, 0, 0, 0]])
    later = tok.clone()
    later[0, 4:] = torch.tensor([5, 6, 7, 8, 9])
    with torch.no_grad():
        assert_close(tower(tok)[0], tower(later)[0], ulps=8)


def test_hooks_on_the_last_block_see_every_position() -> None:
    tower = _tower(**CASES["image-cls"])
    px = _inputs(tower)
    last = tower.config.layers - 1
    names = [f"image.blocks.{last}.resid_post", "image.ln_final", f"image.blocks.{last}.attn.z"]
    with torch.no_grad():
        run = tower.run(px, cache=names)
        ref = tower.run(px, cache=names, all_rows=True)
    for name in names:
        assert run.cache[name].shape[1] == tower.config.n_tokens, name
        torch.testing.assert_close(run.cache[name], ref.cache[name])
    # an intervention in the last block turns the shortcut off and still takes effect
    ablate = [vf.Ablate(f"image.blocks.{last}.attn.v", positions=[1, 2])]
    with torch.no_grad():
        patched = tower.run(px, interventions=ablate)
        ref_patched = tower.run(px, interventions=ablate, all_rows=True)
    torch.testing.assert_close(patched.embed, ref_patched.embed)
    assert not torch.allclose(patched.embed, run.embed)


def test_map_pooled_and_mean_pooled_towers_run_every_row() -> None:
    """No single pooled position: the shortcut must not apply (and results are unchanged)."""
    tower = _tower(modality="image", image_size=32, patch_size=8, pool="mean")
    px = _inputs(tower)
    assert tower._shortcut_rows(0, tower.embed_inputs(px), None, None) is None
    with torch.no_grad():
        torch.testing.assert_close(tower(px)[0], tower(px, all_rows=True)[0])


def test_run_from_the_head_only_skips_no_block() -> None:
    tower = _tower(**CASES["image-cls"])
    x = torch.randn(2, tower.config.n_tokens, 24)
    layers = tower.config.layers
    assert tower._shortcut_rows(layers, x, None, None) is None
    out = tower.run_from(layers, x).embed
    ref = tower.run_from(layers, x, all_rows=True).embed
    torch.testing.assert_close(out, ref)
