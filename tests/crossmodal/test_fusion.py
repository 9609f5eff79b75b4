"""Fusion units across towers: the statistics on planted logit drops, the selection and
the ablations on the bundled tiny model, batched vs serial ablation, retrieval."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import torch

from tolerance import assert_close
from vlmfast import crossmodal as xm
from vlmfast.crossmodal.fusion_stats import pair_statistics
from vlmfast.errors import InputError

# ---------------------------------------------------------------- statistics, planted


def _bilinear(n: int, seed: int) -> tuple[Any, ...]:
    """Logits ``<u_i, v_j>`` with a concept direction ``e`` carried by the images that show
    it (``alpha``) and the captions that name it (``beta``) on top of random content."""
    rng = np.random.default_rng(seed)
    a = rng.random(n) < 0.4
    b = a & (rng.random(n) < 0.8)
    u0, v0 = rng.standard_normal((n, 6)), rng.standard_normal((n, 6))
    u0[:, 0] = v0[:, 0] = 0.0
    alpha, beta = 2.0, 1.5
    u, v = u0.copy(), v0.copy()
    u[:, 0] = alpha * a
    v[:, 0] = beta * b
    return a, b, u0, v0, u, v, alpha, beta


def test_statistics_on_a_planted_bilinear_logit() -> None:
    """Removing the concept from either side removes the same alpha*beta term: the matched
    drops are alpha*beta each, both together alpha*beta too, so the interaction is -alpha*beta
    and the non-matching cells do not move (specificity = alpha*beta)."""
    a, b, u0, v0, u, v, alpha, beta = _bilinear(60, 0)
    clean = u @ v.T
    drops = {"image": clean - u0 @ v.T, "text": clean - u @ v0.T, "both": clean - u0 @ v0.T}
    empty = {c: np.zeros((0, 60, 60)) for c in drops}
    sides, inter = pair_statistics(drops, empty, a, b, n_boot=200, level=0.95, seed=0)
    for c in ("image", "text", "both"):
        s = sides[c]
        assert_close(s.drop_match, alpha * beta)
        assert_close(s.drop_other, 0.0, scale=1.0)
        assert_close(s.specificity, alpha * beta)
        assert s.ci_low <= s.specificity <= s.ci_high
        assert s.pvalue is None and s.null_mean is None
    assert_close(inter.value, -alpha * beta)
    assert inter.ci_low <= inter.value <= inter.ci_high
    assert_close(inter.both_gain, 0.0, scale=1.0)


def test_statistics_null_and_intervals() -> None:
    rng = np.random.default_rng(1)
    n = 40
    a = np.arange(n) < 15
    b = np.arange(n) < 10
    base = rng.normal(0, 0.05, (n, n))
    d = base + np.outer(a, b) * 1.0
    drops = {"image": d, "text": 0.5 * d, "both": 1.2 * d}
    null = {c: rng.normal(0, 0.05, (9, n, n)) for c in drops}
    sides, inter = pair_statistics(drops, null, a, b, n_boot=300, level=0.9, seed=0)
    assert sides["image"].pvalue == pytest.approx(1 / 10)
    assert sides["image"].ci_low > 0.8 and sides["text"].specificity < sides["image"].specificity
    assert inter.value == pytest.approx(
        sides["both"].drop_match - sides["image"].drop_match - sides["text"].drop_match
    )
    assert inter.pvalue is not None and inter.pvalue <= 0.2
    assert inter.both_gain > 0 and inter.both_gain_ci[0] > 0


# ---------------------------------------------------------------- the bundled model


@pytest.fixture(scope="module")
def pair() -> Any:
    import vlmfast as vf

    torch.set_num_threads(1)
    return vf.load_pair("synthetic:tiny").eval()


@pytest.fixture(scope="module")
def data(pair: Any) -> xm.FusionData:
    return xm.FusionData.from_source(pair, "synthetic:n=96,seed=3", n=96)


CFG = dict(concepts=("red", "circle"), n_units=4, n_null=4, n_boot=100, max_rows=2048)


@pytest.fixture(scope="module")
def result(pair: Any, data: xm.FusionData) -> xm.FusionResult:
    return xm.fusion_units(pair, data, xm.FusionConfig(**CFG))  # type: ignore[arg-type]


def test_pairs_are_picked_on_their_own_modality(pair: Any, data: xm.FusionData) -> None:
    from vlmfast.causal.core.activations import unit_activations
    from vlmfast.stats import auroc

    sel, test = data.split(0.5, 0)
    pairs, skipped = xm.select_fusion_pairs(pair, sel, xm.FusionConfig(**CFG), test_data=test)  # type: ignore[arg-type]
    assert not skipped and [p.concept for p in pairs] == ["red", "circle"]
    for p in pairs:
        assert {u.tower for u in p.image_units} == {"image"}
        assert {u.tower for u in p.text_units} == {"text"}
        assert list(p.image_units.scores) == sorted(p.image_units.scores, reverse=True)
        assert min(p.image_units.scores) >= 0.7 and min(p.text_units.scores) >= 0.7
        c = data.concepts.index(p.concept)
        u = p.text_units.units[0]  # recomputed: AUROC of the unit on the captions' labels
        acts = unit_activations(pair, texts=sel.captions, hooks=u.hook)
        want = auroc(acts.values[:, [u.index]].astype(np.float64), sel.caption_labels[:, [c]])
        assert_close(p.text_units.scores[0], float(want[0, 0]))


def test_ablations_on_the_bundled_model(result: xm.FusionResult) -> None:
    assert [p.pair.concept for p in result.pairs] == ["red", "circle"]
    red = result.pairs[0]
    # red: both towers' units lower the matching logits more than the others
    for side in (red.image, red.text, red.both):
        assert side.ci_low > 0 and side.specificity > 0
        assert side.pvalue is not None and side.pvalue >= 1 / (1 + CFG["n_null"])  # type: ignore[operator]
        assert side.null_mean is not None and side.specificity > side.null_mean
    assert red.both.drop_match > max(red.image.drop_match, red.text.drop_match)
    i = red.interaction
    assert_close(i.value, red.both.drop_match - red.image.drop_match - red.text.drop_match)
    assert i.ci_low <= i.value <= i.ci_high
    assert result.n_select + result.n_eval == 96
    assert result.mean_interaction["n_pairs"] == 2
    out = result.to_dict()
    json.dumps(out)
    assert out["paper_claim"] == "ablate.retrieval" and out["retrieval"]["n_null"] == 4


def test_retrieval_matches_a_serial_ablation(
    pair: Any, data: xm.FusionData, result: xm.FusionResult
) -> None:
    """The batched ablation of every pair's units gives the retrieval a plain ``vf.Ablate``
    run gives, and the clean accuracy is :func:`retrieval_accuracy` of the test pairs."""
    from vlmfast.causal.core.units import UnitSet
    from vlmfast.causal.interventions.edits import single_variant_interventions
    from vlmfast.causal.interventions.variants import prepare_eval

    _, test = data.split(0.5, 0)
    r = result.retrieval
    assert r is not None and r.n == test.n
    assert r.clean == pytest.approx(xm.retrieval_accuracy(pair, test.images, test.captions))
    units = {
        t: [u for p in result.pairs for u in getattr(p.pair, f"{t}_units")]
        for t in ("image", "text")
    }
    sets = {t: UnitSet(tuple(dict.fromkeys(us))) for t, us in units.items()}
    assert r.n_units == len(sets["image"]) + len(sets["text"])
    prep = prepare_eval(pair, test.eval_set(), list(sets.values()), {}, "ablate", "mean")
    kw = dict(
        mode="ablate",
        ablation="mean",
        means=prep.means,
        feature_means={},
        saes={},
        head_means={},
        positions=None,
    )
    ivs = {t: single_variant_interventions(pair, t, sets[t], 0.0, **kw) for t in sets}  # type: ignore[arg-type]
    serial = xm.retrieval_accuracy(
        pair,
        test.images,
        test.captions,
        image_interventions=ivs["image"],
        text_interventions=ivs["text"],
    )
    assert r.ablated == pytest.approx(serial)
    assert r.drop == pytest.approx(r.clean - r.ablated)


def test_retrieval_drop_and_ties() -> None:
    lg = np.array([[1.0, 1.0, 0.0], [0.0, 1.0, 2.0], [0.0, 0.0, 3.0]])
    np.testing.assert_array_equal(xm.top1_correct(lg), [True, False, True])  # a tie counts
    clean = np.ones(10, dtype=bool)
    abl = np.arange(10) < 5
    r = xm.retrieval_drop(clean, abl, np.ones((3, 10), dtype=bool), n_boot=100)
    assert r.drop == pytest.approx(0.5) and r.relative == pytest.approx(0.5)
    assert r.pvalue == pytest.approx(1 / 4) and r.drop_ci[0] <= 0.5 <= r.drop_ci[1]
    none = xm.retrieval_drop(np.zeros(10, dtype=bool), np.zeros(10, dtype=bool))
    assert none.relative is None and none.relative_ci is None and none.pvalue is None
    assert none.to_dict()["relative"] is None


def test_bad_config_and_concepts(pair: Any, data: xm.FusionData) -> None:
    with pytest.raises(InputError, match="ablation"):
        xm.FusionConfig(ablation="resample")
    with pytest.raises(InputError, match="not in the fusion data"):
        xm.fusion_units(pair, data, xm.FusionConfig(concepts=("unicorn",)))
    few = data.subset(np.arange(6))
    with pytest.raises(InputError, match="under 4 pairs"):
        xm.fusion_units(pair, few, xm.FusionConfig(concepts=("red",)))
    none = xm.fusion_units(
        pair, data, xm.FusionConfig(concepts=("red",), min_positives=1000, n_null=0)
    )
    assert not none.pairs and "fewer than 1000" in none.skipped["red"]
    assert none.retrieval is None and none.mean_interaction == {}


def test_sae_features_are_candidate_units(pair: Any, data: xm.FusionData) -> None:
    """With ``saes={hook: TopKSAE}`` that hook's units are SAE features, ablated by editing
    the features (the SAE's error term kept)."""
    from vlmfast.sae import TopKSAE

    hook = "text.blocks.2.resid_post"
    sae = TopKSAE(int(pair.config.text.width), 64, 8, seed=0)
    cfg = xm.FusionConfig(
        concepts=("red",), text_hooks=hook, min_auroc=0.0, n_units=2, n_null=2, n_boot=50
    )
    res = xm.fusion_units(pair, data, cfg, saes={hook: sae})
    assert len(res.pairs) == 1  # min_auroc=0: the two best features of a random dictionary
    units = res.pairs[0].pair.text_units
    assert {(u.kind, u.sae, u.hook) for u in units} == {("feature", hook, hook)}
    assert res.retrieval is not None and np.isfinite(res.pairs[0].text.specificity)
