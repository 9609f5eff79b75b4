"""Direct effects: the parts plus the bias terms reproduce the embedding and the logit."""

from __future__ import annotations

from typing import Any

import pyarrow.parquet as pq
import pytest
import torch

from tolerance import PARITY_ULPS, assert_close
from vlmfast.causal.direct import DirectEffects, DirectEffectsBoth, direct_effects
from vlmfast.causal.direct.decompose import reference_parts, tower_parts
from vlmfast.errors import HookNameError, InputError, ShapeError
from vlmfast.models.testing import (
    build_open_clip,
    random_pair_tokens,
    random_pixels,
    tiny_config,
    tiny_pair,
)

ARCHS = {"clip": "ViT-B-32", "siglip": "ViT-SO400M-14-SigLIP-384"}


@pytest.fixture(scope="module", params=sorted(ARCHS))
def pair(request: pytest.FixtureRequest) -> Any:
    return tiny_pair(ARCHS[request.param]).eval()


@pytest.fixture(scope="module")
def clip() -> Any:
    return tiny_pair("ViT-B-32").eval()


@pytest.fixture(scope="module")
def mean_pooled() -> Any:
    """CLIP with a mean-pooled image tower and the final LN after pooling."""
    from vlmfast.models import from_open_clip

    cfg = tiny_config("ViT-B-32")
    cfg["vision_cfg"].update(pool_type="avg", final_ln_after_pool=True)
    return from_open_clip(build_open_clip(cfg, seed=3)).eval()


def _inputs(pair: Any, n: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    return random_pixels(pair, n, seed=seed), random_pair_tokens(pair, n, seed=seed)


@pytest.mark.parametrize("tower", ["image", "text"])
def test_parts_plus_biases_reproduce_logit(pair: Any, tower: str) -> None:
    px, tok = _inputs(pair)
    de = direct_effects(pair, px, tok, tower=tower)
    assert isinstance(de, DirectEffects)
    assert de.check() <= 1e-4
    assert de.check_embed() <= 1e-5
    with torch.no_grad():
        logits = pair.logits(px, tok).diagonal().double()
    assert_close(de.logit, logits, ulps=PARITY_ULPS, dtype=torch.float32)
    # the same sum spelled out from the public pieces
    total = de.heads_per_example.sum((0, 1)) + de.mlps_per_example.sum(0)
    total = total + sum(de.terms.values())
    assert_close(total, logits, ulps=PARITY_ULPS, dtype=torch.float32)
    assert de.heads.shape == (pair.config.tower(tower).layers, pair.config.tower(tower).heads)
    assert de.mlps.shape == (pair.config.tower(tower).layers,)
    if pair.config.logit_bias:
        assert "logit_bias" in de.terms
    if tower == "image" and pair.config.image.pool == "map":
        assert {"pool.mlp", "pool.attn.bias"} <= set(de.terms)


@pytest.mark.parametrize("tower", ["image", "text"])
def test_float64_decomposition_is_exact_and_matches_reference(pair: Any, tower: str) -> None:
    """In float64 the parts sum to the embedding to rounding; the fast path (attn.z with
    pooling weights) equals the per-token reference (attn.head_out through the frozen LN)."""
    pd = tiny_pair(pair.spec.split(":", 1)[1]).eval().double()
    px, tok = _inputs(pd)
    inputs = px.double() if tower == "image" else tok
    fast = tower_parts(pd, tower, inputs)
    ref = reference_parts(pd, tower, inputs)
    assert fast.names == ref.names
    torch.testing.assert_close(fast.parts, ref.parts, atol=1e-10, rtol=0)
    torch.testing.assert_close(fast.parts.sum(0), fast.embed, atol=1e-10, rtol=0)
    de = direct_effects(pd, px.double(), tok, tower=tower)
    assert de.check() <= 1e-10


def test_source_token_parts_sum_to_the_heads(pair: Any) -> None:
    """What each layer's heads read from token s, summed over every s, is the heads' part."""
    pd = tiny_pair(pair.spec.split(":", 1)[1]).eval().double()
    px = random_pixels(pd, 3).double()
    n_tokens = pd.config.image.n_tokens
    total = sum(tower_parts(pd, "image", px, source_token=s).source_parts for s in range(n_tokens))
    tp = tower_parts(pd, "image", px)
    heads = tp.parts[tp.head_slice].reshape(tp.layers, tp.heads, *tp.parts.shape[1:]).sum(1)
    assert isinstance(total, torch.Tensor)
    torch.testing.assert_close(total, heads, atol=1e-10, rtol=0)
    with pytest.raises(InputError, match="source_token"):
        tower_parts(pd, "image", px, source_token=n_tokens)


def test_mean_pooling_post_pool_ln(mean_pooled: Any) -> None:
    assert mean_pooled.config.image.pool == "mean"
    assert mean_pooled.config.image.final_ln == "post_pool"
    px, tok = _inputs(mean_pooled)
    de = direct_effects(mean_pooled, px, tok, tower="image")
    assert de.check() <= 1e-4
    pd = mean_pooled.double()
    try:
        fast = tower_parts(pd, "image", px.double())
        ref = reference_parts(pd, "image", px.double())
        torch.testing.assert_close(fast.parts, ref.parts, atol=1e-10, rtol=0)
    finally:
        mean_pooled.float()


def test_contributions_against_any_texts_sum_to_the_logit_matrix(pair: Any) -> None:
    px, tok = _inputs(pair, n=4)
    de = direct_effects(pair, px, tok, tower="image")
    assert isinstance(de, DirectEffects)
    contrib = de.contributions()  # [P, B, N]
    with torch.no_grad():
        logits = pair.logits(px, tok).double()
    assert_close(
        contrib.sum(0) + (de.logit_bias or 0.0), logits, ulps=PARITY_ULPS, dtype=torch.float32
    )
    torch.testing.assert_close(contrib.diagonal(dim1=1, dim2=2), de.parts_logit)


def test_both_towers(pair: Any) -> None:
    px, tok = _inputs(pair, n=3)
    both = direct_effects(pair, px, tok, tower="both")
    assert isinstance(both, DirectEffectsBoth)
    assert both.check() <= 1e-4
    assert_close(both.image.logit, both.text.logit, dtype=torch.float32)
    assert set(both.to_json()) == {"image", "text"}


def test_batching_does_not_change_the_parts(clip: Any) -> None:
    px, tok = _inputs(clip, n=5)
    one = direct_effects(clip, px, tok, batch_size=64)
    two = direct_effects(clip, px, tok, batch_size=2)
    assert isinstance(one, DirectEffects) and isinstance(two, DirectEffects)
    assert_close(one.embed_parts, two.embed_parts, ulps=8, dtype=torch.float32)


# ---- the null --------------------------------------------------------------------------
def test_null_is_seeded_and_shaped(clip: Any) -> None:
    px, tok = _inputs(clip, n=6)
    a = direct_effects(clip, px, tok, null=30, seed=1)
    b = direct_effects(clip, px, tok, null=30, seed=1)
    assert isinstance(a, DirectEffects) and isinstance(b, DirectEffects)
    assert a.null is not None and b.null is not None
    torch.testing.assert_close(a.null.heads_draws, b.null.heads_draws)
    layers, heads = a.heads.shape
    assert a.null.heads_p.shape == (layers, heads)
    assert a.null.heads_interval.shape == (2, layers, heads)
    assert bool((a.null.heads_p > 0).all() and (a.null.heads_p <= 1).all())
    assert bool((a.null.heads_interval[0] <= a.null.heads_interval[1]).all())
    assert a.to_json()["null"]["draws"] == 30


def test_null_p_is_one_when_pairing_cannot_matter(clip: Any) -> None:
    """With every caption identical, a mismatched pair is the matched pair: each draw
    equals the observed effect, so every p-value is 1 and the interval is a point."""
    px, tok = _inputs(clip, n=6)
    same = tok[:1].repeat(6, 1)
    de = direct_effects(clip, px, same, null=20)
    assert isinstance(de, DirectEffects) and de.null is not None
    assert bool((de.null.heads_p == 1).all()) and bool((de.null.mlps_p == 1).all())
    assert_close(de.null.heads_interval[0], de.heads, dtype=torch.float32)


def test_null_equals_the_decomposition_with_pairs_mismatched(clip: Any) -> None:
    """Each null draw is the mean over examples of contributions()[head, i, perm(i)] for a
    seeded derangement perm; p-values follow the two-sided permutation formula."""
    from vlmfast.causal.direct.effects import _derangement

    px, tok = _inputs(clip, n=7, seed=3)
    draws = 40
    de = direct_effects(clip, px, tok, null=draws, seed=5)
    assert isinstance(de, DirectEffects) and de.null is not None
    contrib = de.contributions()  # [P, B, B]
    layers, heads = de.heads.shape
    head_rows = contrib[1 : 1 + layers * heads]
    gen = torch.Generator().manual_seed(5)
    rows = torch.arange(7)
    want = []
    for _ in range(draws):
        perm = _derangement(7, gen)
        assert not bool((perm == rows).any())
        want.append(head_rows[:, rows, perm].mean(-1).reshape(layers, heads))
    null = torch.stack(want)
    torch.testing.assert_close(de.null.heads_draws, null, atol=1e-10, rtol=0)
    center = null.mean(0)
    extreme = ((null - center).abs() >= (de.heads - center).abs() - 1e-9).sum(0)
    torch.testing.assert_close(de.null.heads_p, (1 + extreme) / (1 + draws), atol=1e-12, rtol=0)
    k = (de.null.heads_p * (draws + 1)).round()
    torch.testing.assert_close(k / (draws + 1), de.null.heads_p)


# ---- bad input -------------------------------------------------------------------------
def test_bad_input(clip: Any) -> None:
    px, tok = _inputs(clip, n=3)
    with pytest.raises(InputError, match="tower"):
        direct_effects(clip, px, tok, tower="audio")
    with pytest.raises(ShapeError, match="3 images and 2 texts"):
        direct_effects(clip, px, tok[:2])
    with pytest.raises(InputError, match="texts"):
        direct_effects(clip, px, None)
    with pytest.raises(InputError, match="null"):
        direct_effects(clip, px, tok, null=-1)
    with pytest.raises(InputError, match="at least 2"):
        direct_effects(clip, px[:1], tok[:1], null=5)
    with pytest.raises(InputError, match="HookedPair"):
        direct_effects(object(), px, tok)
    clip.train()
    try:
        with pytest.raises(InputError, match="eval mode"):
            direct_effects(clip, px, tok)
    finally:
        clip.eval()


def test_model_without_the_hooks(clip: Any) -> None:
    class NoHeadHooks:
        """A pair whose hook namespace lacks per-head outputs."""

        def __init__(self, inner: Any) -> None:
            self._inner = inner
            self.training = False

        def __getattr__(self, name: str) -> Any:
            return getattr(self._inner, name)

        def hook_points(self) -> list[str]:
            return [h for h in self._inner.hook_points() if not h.endswith("attn.z")]

    px, tok = _inputs(clip, n=2)
    with pytest.raises(HookNameError, match=r"attn\.z"):
        direct_effects(NoHeadHooks(clip), px, tok)


# ---- the command line ------------------------------------------------------------------
def test_cli_direct_effects(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from vlmfast.cli import main

    out = tmp_path / "de"
    argv = ["direct-effects", "--model", "synthetic:tiny", "--data", "synthetic:n=40,seed=7"]
    argv += ["--out", str(out), "--null", "20", "--tower", "both"]
    argv += ["--ladder-classes", "circle,square,triangle,diamond,cross,star", "--ladder-cls"]
    assert main(argv) == 0
    summary = json.loads((out / "direct_effects.json").read_text())
    assert summary["n_pairs"] == 40
    for tower in ("image", "text"):
        part = summary["direct_effects"][tower]
        assert part["check_logit_max_abs"] <= 1e-4
        assert part["null"]["draws"] == 20
        assert (out / f"heads_{tower}.png").stat().st_size > 0
        assert (out / f"heads_{tower}.svg").stat().st_size > 0
    rungs = summary["ladder"]["rungs"]
    assert rungs[0]["name"] == "clean" and len(rungs) == 4 + 3
    assert rungs[2]["name"] == "mlps+cls"
    rows = pq.read_table(out / "parts.parquet").to_pylist()
    n_parts = 1 + 4 * 4 + 4 + 4 + 1 + 1 + 3 * 4 + 3 + 3 + 1  # image + text parts
    assert len(rows) == 40 * n_parts
    assert "parts+biases - logit max" in capsys.readouterr().out


def test_cli_bad_input(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from vlmfast.cli import main

    base = ["direct-effects", "--model", "synthetic:tiny", "--out", str(tmp_path / "x")]
    assert main([*base, "--data", "synthetic:n=0"]) == 1
    assert "yielded 0 records with both an image and a caption" in capsys.readouterr().err
    argv = [*base, "--data", "synthetic:n=4", "--null", "0", "--ladder-classes", "zebra"]
    assert main(argv) == 1
    assert "names exactly one" in capsys.readouterr().err
