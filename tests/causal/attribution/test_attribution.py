"""Attribution patching: exact on a linear pair, close to exact patching on the bundled model."""

from __future__ import annotations

from typing import Any

import pyarrow.parquet as pq
import pytest
import torch

import vlmfast as vf
from tolerance import PARITY_ULPS, assert_close
from vlmfast.causal.attribution import attribute, exact_effects
from vlmfast.causal.core.metrics import MatchedScore, similarity
from vlmfast.errors import InputError, ShapeError
from vlmfast.models import testing
from vlmfast.models.pair import HookedPair

DOT = MatchedScore(space="dot")
KINDS = ("resid", "heads", "neurons")


def linear_pair(seed: int = 0) -> HookedPair:
    """The affine toy of ``vlmfast.models.testing`` (2 blocks)."""
    pair: HookedPair = testing.linear_pair(seed, layers=2, mlp_width=12)
    return pair


def _text(seed: int, n: int = 3) -> torch.Tensor:
    return testing.linear_pair_inputs(seed, n)[1]


def _images(seed: int, n: int = 3) -> torch.Tensor:
    return testing.linear_pair_inputs(seed, n)[0]


@pytest.fixture(scope="module")
def toy() -> HookedPair:
    return linear_pair()


@pytest.fixture(scope="module")
def tiny() -> Any:
    return vf.load_pair("synthetic:tiny")


@pytest.fixture(scope="module")
def tiny_inputs(tiny: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from PIL import Image

    from vlmfast.data.synthetic.dataset import make_sample

    samples = [make_sample(0, "test", i) for i in range(6)]
    px = tiny.preprocess([Image.fromarray(s.image()) for s in samples])
    tok = tiny.tokenize([s.caption.text for s in samples])
    neg = tiny.tokenize([next(iter(s.negatives.values())).text for s in samples])
    return px, tok, px.roll(1, 0), neg


@pytest.mark.parametrize("method", ["atp", "atp*", "ig"])
def test_linear_pair_is_exact_and_complete(toy: HookedPair, method: str) -> None:
    px, tok = _images(0), _text(0)
    px_c, tok_c = _images(1), _text(1)
    att = attribute(toy, px, tok, px_c, tok_c, metric=DOT, method=method, steps=3)
    exact = exact_effects(toy, px, tok, px_c, tok_c, metric=DOT)
    for key, eff in exact.items():
        assert eff.abs().max() > 1e-3, key
        torch.testing.assert_close(att.scores[key], eff, atol=2e-4, rtol=1e-4)
    for tower in ("image", "text"):
        assert abs(att.completeness_gap[tower]) < 1e-3 * max(1.0, abs(att.tower_change[tower]))
        torch.testing.assert_close(
            att.layer_gaps[tower], torch.zeros(2), atol=1e-3 * abs(att.tower_change[tower]), rtol=0
        )
    # the dot score is bilinear: the joint gap is exactly the cross-tower interaction
    with torch.no_grad():
        img = {"c": toy.encode_image(px), "x": toy.encode_image(px_c)}
        txt = {"c": toy.encode_text(tok), "x": toy.encode_text(tok_c)}
        scale, bias = toy.logit_scale, None

        def m(i: str, t: str) -> float:
            return float(DOT(similarity(img[i], txt[t], scale, bias, "dot")))

        interaction = m("c", "c") - m("c", "x") - m("x", "c") + m("x", "x")
    assert att.completeness_gap["joint"] == pytest.approx(-interaction, abs=1e-3)


def test_noising_flips_the_sign_on_a_linear_pair(toy: HookedPair) -> None:
    px, tok, px_c = _images(0), _text(0), _images(2)
    den = attribute(toy, px, tok, px_c, metric=DOT, towers=("image",))
    noi = attribute(toy, px, tok, px_c, metric=DOT, towers=("image",), direction="noising")
    for key in den.scores:
        assert_close(noi.scores[key], -den.scores[key], ulps=PARITY_ULPS, dtype=torch.float32)
    assert den.metric_clean == pytest.approx(noi.metric_clean)
    assert den.metric_corrupt == pytest.approx(noi.metric_corrupt)
    assert den.total_change == pytest.approx(den.metric_clean - den.metric_corrupt)
    # the text tower is not corrupted: no text scores were asked for, none computed
    assert all(k[0] == "image" for k in den.scores)


def test_graddrop_of_last_layer_is_plain_atp(toy: HookedPair) -> None:
    """Depth 2: a last-layer component's drops are (upstream block: unchanged, own block: 0)."""
    px, tok, px_c = _images(0), _text(0), _images(3)
    att = attribute(toy, px, tok, px_c, metric=DOT, method="atp*", towers=("image",))
    assert att.graddrop is not None
    for kind in ("heads", "neurons"):
        assert_close(
            att.graddrop["image", kind][1], att.scores["image", kind][1].abs(), dtype=torch.float32
        )
        assert att.graddrop["image", kind].shape == att.scores["image", kind].shape


def test_tiny_model_heads_track_exact_patching(tiny: Any, tiny_inputs: Any) -> None:
    px, tok, px_c, _ = tiny_inputs
    exact = exact_effects(tiny, px, tok, px_c, components=("heads",), towers=("image",))
    for method in ("atp", "atp*"):
        att = attribute(
            tiny, px, tok, px_c, components=("heads",), towers=("image",), method=method
        )
        cmp = att.compare(exact)["image", "heads"]
        assert cmp["spearman_abs"] > 0.7, (method, cmp)
        assert att.scores["image", "heads"].shape == (4, 4)
    one = att.compare(exact["image", "heads"])
    assert set(one) == {("image", "heads")}


def test_ig_completeness_and_text_corruption(tiny: Any, tiny_inputs: Any) -> None:
    px, tok, _, neg = tiny_inputs
    att = attribute(tiny, px, tok, corrupt_texts=neg, method="ig", steps=16, components=("resid",))
    assert abs(att.tower_change["text"]) > 0.5
    # the midpoint rule on the input line: only quadrature error remains at the layer-0 cut
    assert abs(att.completeness_gap["text"]) < 0.05 * abs(att.tower_change["text"])
    assert att.completeness_gap["image"] == 0.0
    assert att.scores["text", "resid"].shape == (3, tok.shape[1])
    assert float(att.scores["image", "resid"].abs().max()) == 0.0


def test_null_is_deterministic_and_matches_exact(tiny: Any, tiny_inputs: Any) -> None:
    px, tok, px_c, _ = tiny_inputs
    kw = dict(components=("heads",), towers=("image", "text"), null=2, seed=7)
    a = attribute(tiny, px, tok, px_c, **kw)
    b = attribute(tiny, px, tok, px_c, **kw)
    assert a.null is not None and b.null is not None
    est = a.null["image", "heads"]
    assert est.indices == b.null["image", "heads"].indices
    assert est.layers == [0, 0, 1, 1, 2, 2, 3, 3]
    assert ("text", "heads") not in a.null  # the text tower is not corrupted
    exact = exact_effects(tiny, px, tok, px_c, components=("heads",), towers=("image",))
    want = exact["image", "heads"][torch.tensor(est.layers), torch.tensor(est.indices)]
    assert_close(torch.tensor(est.exact), want, ulps=PARITY_ULPS, dtype=torch.float32)
    assert est.n_large >= 1
    assert 0.0 <= est.false_negative_rate <= 1.0
    assert "null" in a.to_json()


def test_bad_inputs(toy: HookedPair) -> None:
    px, tok, px_c = _images(0), _text(0), _images(1)
    with pytest.raises(InputError, match=r"towers must be one of \['image', 'text'\]"):
        attribute(toy, px, tok, px_c, towers=("audio",))
    with pytest.raises(
        InputError, match=r"components must be one of \['resid', 'heads', 'neurons'\]"
    ):
        attribute(toy, px, tok, px_c, components=("mlp",))
    with pytest.raises(InputError, match=r"method must be one of \['atp', 'atp\*', 'ig'\]"):
        attribute(toy, px, tok, px_c, method="eap")
    with pytest.raises(InputError, match="direction"):
        attribute(toy, px, tok, px_c, direction="sideways")
    with pytest.raises(ShapeError, match="corrupted images"):
        attribute(toy, px, tok, px_c[:2])
    with pytest.raises(ShapeError, match="corrupted texts"):
        attribute(toy, px, tok, corrupt_texts=_text(1)[:, :5])
    with pytest.raises(InputError, match="corrupt_images=, corrupt_texts="):
        attribute(toy, px, tok)
    with pytest.raises(ShapeError, match="metric must map"):
        attribute(toy, px, tok, px_c, metric=lambda sim: sim)
    with pytest.raises(InputError, match="steps"):
        attribute(toy, px, tok, px_c, method="ig", steps=0)
    toy.train()
    try:
        with pytest.raises(InputError, match=r"pair\.training"):
            attribute(toy, px, tok, px_c)
    finally:
        toy.eval()


def test_result_exports(toy: HookedPair, tmp_path: Any) -> None:
    px, tok, px_c = _images(0), _text(0), _images(1)
    att = attribute(toy, px, tok, px_c, metric=DOT, method="atp*")
    import json

    data = json.loads(att.to_json())
    assert data["direction"] == "denoising" and data["method"] == "atp*"
    assert len(data["scores"]["image/heads"]) == 2
    rows = att.table()
    assert len(rows) == sum(v.numel() for v in att.scores.values())
    pytest.importorskip("matplotlib")
    att.plot(tmp_path / "heat")
    assert (tmp_path / "heat.png").stat().st_size > 0
    assert (tmp_path / "heat.svg").stat().st_size > 0


@pytest.mark.slow
def test_b32_shapes() -> None:
    """Full ViT-B/32 (random weights): every kind of both towers, shapes and finite gaps."""
    pair = vf.load_pair("open_clip:ViT-B-32")
    gen = torch.Generator().manual_seed(0)
    px, px_c = torch.randn(2, 2, 3, 224, 224, generator=gen)
    tok = pair.tokenize(["a red cube left of a blue sphere", "two green cones"])
    tok_c = pair.tokenize(["a blue cube left of a red sphere", "two green boxes"])
    att = attribute(pair, px, tok, px_c, tok_c)
    assert att.scores["image", "resid"].shape == (12, 50)
    assert att.scores["image", "heads"].shape == (12, 12)
    assert att.scores["image", "neurons"].shape == (12, 3072)
    assert att.scores["text", "resid"].shape == (12, 77)
    assert att.scores["text", "neurons"].shape == (12, 2048)
    assert all(torch.isfinite(v).all() for v in att.scores.values())
    assert all(abs(g) < float("inf") for g in att.completeness_gap.values())


@pytest.mark.parametrize(("causal", "temp"), [(False, 1.0), (True, 1.0), (False, 40.0)])
def test_qk_fix_matches_one_patch_at_a_time(causal: bool, temp: float) -> None:
    """The closed-form per-key softmax equals recomputing it with each key patched alone;
    temp=40 saturates the attention (the case plain AtP gets wrong)."""
    from vlmfast.causal.attribution.atp_star import qk_fixed_position_scores

    gen = torch.Generator().manual_seed(1)
    b, t, h, d = 2, 5, 3, 4
    qb, kb, vb, qs, ks, vs, gv = (torch.randn(b, t, h, d, generator=gen) for _ in range(7))
    qb, qs = qb * temp, qs * temp
    gp = torch.randn(b, h, t, t, generator=gen)
    got = qk_fixed_position_scores(qb, kb, vb, qs, ks, vs, gp, gv, causal)

    def pattern(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        logits = torch.einsum("bthe,bshe->bhts", q.double(), k.double()) / d**0.5
        if causal:
            logits = logits.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
        return logits.softmax(-1)

    base = pattern(qb, kb)
    want = ((vs - vb) * gv).double().sum(dim=(0, 2, 3))
    for p in range(t):
        q1, k1 = qb.clone(), kb.clone()
        q1[:, p], k1[:, p] = qs[:, p], ks[:, p]
        want[p] += ((pattern(q1, kb) - base) * gp).sum() + ((pattern(qb, k1) - base) * gp).sum()
    assert_close(got.double(), want, dtype=torch.float32)


def test_cli_writes_json_table_and_heatmaps(tmp_path: Any) -> None:
    import json

    from vlmfast.cli import main

    out = tmp_path / "att"
    argv = ["attribute", "--model", "synthetic:tiny", "--data", "synthetic:n=4,seed=0"]
    argv += ["--out", str(out), "--components", "heads", "--null", "1", "--no-progress"]
    assert main(argv) == 0
    data = json.loads((out / "attribution.json").read_text())
    assert data["run"]["corrupt"] == "image-shift" and data["run"]["pairs"] == 4
    assert len(data["scores"]["image/heads"]) == 4
    assert data["null"]["image/heads"]["layers"] == [0, 1, 2, 3]
    table = out / data["run"]["table"]
    assert table.name == "attribution.parquet"
    rows = pq.read_table(table).to_pylist()
    assert {(r["tower"], r["kind"]) for r in rows} >= {("image", "heads")}


@pytest.mark.parametrize("method", ["atp", "atp*", "ig"])
def test_untouched_scored_tower_scores_zero(toy: HookedPair, method: str) -> None:
    px, tok = _images(0), _text(0)
    att = attribute(toy, px, tok, corrupt_texts=_text(4), towers=("image",), method=method)
    assert all(float(v.abs().max()) == 0.0 for v in att.scores.values())
    assert att.completeness_gap["image"] == 0.0
    assert att.tower_change["text"] != 0.0


def test_compare_with_a_trace(tiny: Any, tiny_inputs: Any) -> None:
    """compare reads a TraceResult: heads as they are, resid rows shifted by one layer."""
    px, tok, px_c, _ = tiny_inputs
    tr = vf.causal.trace(tiny, px, tok, "image", corrupted=px_c, kinds=("heads", "resid"))
    att = attribute(tiny, px, tok, px_c, components=("heads", "resid"), towers=("image",))
    exact = exact_effects(tiny, px, tok, px_c, components=("heads",), towers=("image",))
    assert_close(
        tr.effect["heads"] - tr.corrupt,
        exact["image", "heads"],
        ulps=PARITY_ULPS,
        dtype=torch.float32,
    )
    by_trace = att.compare(tr)
    assert by_trace["image", "heads"] == att.compare(exact)["image", "heads"]
    assert by_trace["image", "resid"]["n"] == 3 * 17  # layers 1-3 x 17 positions
    assert -1.0 <= by_trace["image", "heads"]["spearman"] <= 1.0
    with pytest.raises(InputError, match="every layer"):
        att.compare(
            vf.causal.trace(tiny, px, tok, "image", corrupted=px_c, kinds=("heads",), layers=[0])
        )


def test_a_config_and_keywords_are_the_same_call() -> None:
    """``attribute(..., config=AttributionConfig(...))`` is the keyword call."""
    pair = testing.tiny_pair("ViT-B-32").eval()
    px, tok = testing.random_pixels(pair, 2, seed=1), testing.random_pair_tokens(pair, 2, seed=2)
    px_c = testing.random_pixels(pair, 2, seed=3)
    kw: dict[str, Any] = dict(components=("heads",), towers=("image",), method="atp*")
    by_kw = vf.causal.attribute(pair, px, tok, px_c, **kw)
    config = vf.causal.AttributionConfig(**kw)
    by_config = vf.causal.attribute(pair, px, tok, px_c, config=config)
    assert by_kw.scores.keys() == by_config.scores.keys()
    for key in by_kw.scores:
        assert torch.equal(by_kw.scores[key], by_config.scores[key])
    mixed = vf.causal.attribute(pair, px, tok, px_c, config=config, method="atp")
    assert by_config.method == "atp*" and mixed.method == "atp" and config.method == "atp*"
    with pytest.raises(TypeError, match="mehtod"):
        vf.causal.attribute(pair, px, tok, px_c, mehtod="ig")
