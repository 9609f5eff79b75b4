"""concept_intervention / top_units / steering_sweep: planted toy pair, batched = loop, errors,
and the bundled model's color neurons."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

import vlmfast as vf
from tolerance import assert_close
from vlmfast.causal.core.activations import unit_activations
from vlmfast.causal.core.evalset import EvalSet
from vlmfast.causal.core.unit_ranking import top_units
from vlmfast.causal.core.units import Unit, UnitSet, random_like
from vlmfast.causal.interventions import (
    InterventionConfig,
    concept_intervention,
    steering_sweep,
)
from vlmfast.errors import InputError
from vlmfast.models.config import PairConfig, TowerConfig
from vlmfast.models.pair import HookedPair

WORDS = {"A": 1, "B": 2, "C": 3}
NEURONS = "image.blocks.0.mlp.post"


def _tokenize(texts: list[str]) -> torch.Tensor:
    out = torch.zeros(len(texts), 4, dtype=torch.long)
    for i, t in enumerate(texts):
        ids = [*[WORDS[w] for w in t.split()][:3], 4]
        out[i, : len(ids)] = torch.tensor(ids)
    return out


def toy_pair() -> HookedPair:
    """Image neuron j (j < 3) fires iff concept j ("A", "B", "C") is in the image and writes
    to embedding dim j; neurons 3..5 fire always and write where nothing reads. The text
    embedding of a prompt naming concept j is e_j + 0.3 e_3."""
    img = TowerConfig(
        modality="image", width=8, layers=1, heads=1, head_dim=8, mlp_width=6,
        final_ln="none", pool="mean", embed_dim=4, image_size=4, patch_size=4,
        class_token=False, patch_bias=True,
    )  # fmt: skip
    txt = TowerConfig(
        modality="text", width=8, layers=1, heads=1, head_dim=8, mlp_width=4,
        final_ln="none", pool="first", embed_dim=4, vocab_size=5, context_length=4,
    )  # fmt: skip
    pair = HookedPair(PairConfig(img, txt, name="toy"), tokenizer=_tokenize, spec="toy:planted")
    with torch.no_grad():
        for p in pair.parameters():
            p.zero_()
        pair.logit_scale.fill_(np.log(10.0))
        im = pair.image
        for c in range(3):
            im.patch_weight[c, c] = 1.0 / 16
        im.patch_bias[3] = 1.0
        mlp = im.blocks[0].mlp
        for j in range(3):
            mlp.fc1_weight[j, j] = 10.0
            mlp.fc2_weight[4 + j, j] = 0.1  # unsaturated: steering up raises the cosine
        for j in range(3, 6):
            mlp.fc1_weight[j, 3] = 10.0
            mlp.fc2_weight[7, j] = 1.0
        for ln in (
            im.blocks[0].ln1,
            im.blocks[0].ln2,
            pair.text.blocks[0].ln1,
            pair.text.blocks[0].ln2,
        ):
            ln.weight.fill_(1.0)
        for j in range(3):
            im.proj_weight[j, 4 + j] = 1.0
        im.proj_weight[3, 3] = 1.0
        tx = pair.text
        for j in WORDS.values():
            tx.token_embed[j, j - 1] = 1.0
            tx.token_embed[j, 3] = 0.3
        for j in range(4):
            tx.proj_weight[j, j] = 1.0
    return pair.eval()


def toy_eval() -> EvalSet:
    subsets = [(c,) for c in range(3)] * 8  # one concept per image: cos normalisation
    # would otherwise couple concepts shown together
    px = torch.zeros(len(subsets), 3, 4, 4)
    labels = np.zeros((len(subsets), 3), dtype=bool)
    caps = []
    for i, s in enumerate(subsets):
        for c in s:
            px[i, c] = 1.0
            labels[i, c] = True
        caps.append(" ".join("ABC"[c] for c in s))
    return EvalSet(px, caps, labels, ("A", "B", "C"), ("letter",) * 3, {c: [c] for c in "ABC"})


@pytest.fixture(scope="module")
def toy() -> tuple[HookedPair, EvalSet]:
    return toy_pair(), toy_eval()


def _planted(j: int) -> UnitSet:
    return UnitSet((Unit(NEURONS, j, "neuron"),), concept="ABC"[j], model="toy:planted")


def test_toy_scores_pick_the_planted_neurons(toy: tuple[HookedPair, EvalSet]) -> None:
    pair, ev = toy
    acts = unit_activations(pair, images=ev.images, hooks=NEURONS)
    assert acts.values.shape == (ev.n, 6)
    scores = vf.scoring.score_units(
        acts.values, ev.labels, concepts=vf.scoring.ConceptSet.make(ev.concepts), meta=acts.meta()
    )
    for j, c in enumerate("ABC"):
        us = top_units(scores, c, n=1)
        assert us.units == (Unit(NEURONS, j, "neuron"),)
        assert us.model == "toy:planted" and us.concept == c and us.scores[0] == 1.0


@pytest.mark.parametrize("j", [0, 1, 2])
def test_toy_ablation_moves_only_the_planted_concept(
    toy: tuple[HookedPair, EvalSet], j: int
) -> None:
    pair, ev = toy
    r = concept_intervention(pair, _planted(j), ablation="zero", eval_data=ev, null=20, seed=0)
    assert r.concept == "ABC"[j]
    assert r.target.delta["margin"] < -1.0
    assert r.target.delta["zero_shot"] < -0.5
    for name, eff in r.others.per_concept.items():
        assert abs(eff.delta["margin"]) < 1e-4, name
        assert abs(eff.delta["score"]) < 1e-4, name
    # random single neurons of the same hook never move the target: p = 1/21
    assert r.null is not None and r.null.pvalue is not None
    assert max(abs(x) for x in r.null.target["margin"]) < 1e-4
    assert r.null.pvalue["margin"] == pytest.approx(1 / 21)
    assert r.targeted is True
    assert r.verdict["exceeds_others"] and r.verdict["exceeds_null"]
    # overall figures pool every (image, concept shown); 8 images per concept here
    clean = [r.target.clean["margin"]] + [e.clean["margin"] for e in r.others.per_concept.values()]
    assert r.overall.clean["margin"] == pytest.approx(np.mean(clean))
    assert r.overall.clean["zero_shot"] == 1.0 and r.overall.clean["i2t@5"] == 1.0
    after = [r.target.after["margin"]] + [e.after["margin"] for e in r.others.per_concept.values()]
    assert r.overall.delta["margin"] == pytest.approx(np.mean(after) - np.mean(clean))
    assert '"concept"' in r.to_json()
    assert {row["role"] for row in r.rows()} == {"target", "other", "overall"}


def test_toy_decoy_neuron_is_not_targeted(toy: tuple[HookedPair, EvalSet]) -> None:
    pair, ev = toy
    decoy = UnitSet((Unit(NEURONS, 4, "neuron"),), concept="A", model="toy:planted")
    r = concept_intervention(pair, decoy, ablation="zero", eval_data=ev, null=20, seed=0)
    assert abs(r.target.delta["margin"]) < 1e-4
    assert r.targeted is False


@pytest.mark.parametrize("mode", ["ablate", "steer"])
def test_batched_equals_loop(toy: tuple[HookedPair, EvalSet], mode: str) -> None:
    pair, ev = toy
    units = UnitSet((Unit(NEURONS, 0, "neuron"), Unit(NEURONS, 4, "neuron")), concept="A")
    kw: dict[str, Any] = dict(mode=mode, ablation="mean", eval_data=ev, null=20, seed=3)
    if mode == "steer":
        kw["alpha"] = 0.7
    a = concept_intervention(pair, units, method="batched", max_rows=40, **kw)
    b = concept_intervention(pair, units, method="serial", **kw)
    assert a.null is not None and b.null is not None
    for m in a.target.delta:
        assert a.target.delta[m] == pytest.approx(b.target.delta[m], abs=1e-6)
        assert np.allclose(a.null.target[m], b.null.target[m], atol=1e-6)


def test_steering_raises_the_target_and_sweep_matches_loop(toy: tuple[HookedPair, EvalSet]) -> None:
    pair, ev = toy
    r = concept_intervention(
        pair, _planted(0), mode="steer", alpha=0.5, eval_data=ev, null=0, pvalues=False
    )
    assert r.target.delta["score"] > 0.1
    assert r.target.delta["margin"] > 0.1
    sets = {c: _planted(j) for j, c in enumerate("ABC")}
    alphas = [-1.0, 0.0, 0.5, 2.0]
    fast = steering_sweep(pair, sets, alphas, eval_data=ev, max_rows=50)
    slow = steering_sweep(pair, sets, alphas, eval_data=ev, method="serial")
    assert fast.delta.shape == (3, 4, 3, 8)
    assert_close(fast.delta, slow.delta, dtype=torch.float32, ulps=8)
    curve = fast.curve("B", "score")
    assert curve[1] == pytest.approx(0.0, abs=1e-9) and curve[0] < 0 < curve[2] < curve[3]


def test_sae_feature_ablation_batched_equals_loop(toy: tuple[HookedPair, EvalSet]) -> None:
    pair, ev = toy
    sae = vf.sae.TopKSAE(d_in=8, n_latents=16, k=4)
    hook = "image.blocks.0.resid_post"
    units = UnitSet(tuple(Unit(hook, f, "feature", "s") for f in (1, 5)), concept="B")
    kw: dict[str, Any] = dict(eval_data=ev, null=20, saes={"s": sae}, seed=1)
    a = concept_intervention(pair, units, max_rows=30, **kw)
    b = concept_intervention(pair, units, method="serial", **kw)
    assert a.null is not None and b.null is not None
    assert_close(a.null.target["score"], b.null.target["score"], dtype=torch.float32)
    assert a.target.delta["score"] == pytest.approx(b.target.delta["score"], abs=1e-5)


def test_loop_is_the_deprecated_name_of_serial(toy: tuple[HookedPair, EvalSet]) -> None:
    """``method="loop"`` still runs the serial reference, with a DeprecationWarning."""
    pair, ev = toy
    units = UnitSet((Unit(NEURONS, 0, "neuron"),), concept="A")
    kw: dict[str, Any] = dict(eval_data=ev, null=0, pvalues=False)
    serial = concept_intervention(pair, units, method="serial", **kw)
    with pytest.warns(DeprecationWarning, match="'serial'"):
        loop = concept_intervention(pair, units, method="loop", **kw)
    assert loop.to_json() == serial.to_json()
    with pytest.warns(DeprecationWarning, match="'serial'"):
        steering_sweep(pair, [_planted(0)], [0.5], eval_data=ev, method="loop")


def test_a_config_and_keywords_are_the_same_call(toy: tuple[HookedPair, EvalSet]) -> None:
    pair, ev = toy
    units = UnitSet((Unit(NEURONS, 0, "neuron"), Unit(NEURONS, 4, "neuron")), concept="A")
    by_kw = concept_intervention(pair, units, eval_data=ev, null=20, seed=3)
    config = InterventionConfig(eval_data=ev, null=20, seed=3)
    assert concept_intervention(pair, units, config).to_json() == by_kw.to_json()
    steered = concept_intervention(
        pair, units, config, mode="steer", alpha=0.5, null=0, pvalues=False
    )
    assert steered.mode == "steer" and config.mode == "ablate"
    with pytest.raises(TypeError, match="nul"):
        concept_intervention(pair, units, nul=3)


def test_null_sets_match_the_mix_and_are_seeded(toy: tuple[HookedPair, EvalSet]) -> None:
    pair, _ = toy
    units = UnitSet(
        (Unit(NEURONS, 0), Unit(NEURONS, 1), Unit("image.blocks.0.attn.z", 0, "head")), concept="A"
    )
    a = random_like(units, pair, 30, seed=7)
    b = random_like(units, pair, 30, seed=7)
    assert [x.units for x in a] == [x.units for x in b]
    for s in a:
        assert s.mix() == units.mix()
        neurons = [u.index for u in s if u.hook == NEURONS]
        assert len(set(neurons)) == 2 and not {0, 1} & set(neurons)
    assert len({x.units for x in a}) > 1


def test_bad_input_names_the_argument(toy: tuple[HookedPair, EvalSet]) -> None:
    pair, ev = toy
    with pytest.raises(InputError, match="null=10"):
        concept_intervention(pair, _planted(0), eval_data=ev, null=10)
    with pytest.raises(InputError, match="picked on model"):
        concept_intervention(
            pair,
            UnitSet(_planted(0).units, "A", model="synthetic:tiny"),
            eval_data=ev,
            null=0,
            pvalues=False,
        )
    with pytest.raises(InputError, match="not a hook"):
        concept_intervention(
            pair,
            UnitSet((Unit("image.blocks.7.mlp.post", 0),), "A"),
            eval_data=ev,
            null=0,
            pvalues=False,
        )
    with pytest.raises(InputError, match="out of range"):
        concept_intervention(
            pair, UnitSet((Unit(NEURONS, 99),), "A"), eval_data=ev, null=0, pvalues=False
        )
    small = vf.sae.TopKSAE(d_in=5, n_latents=8, k=2)
    feat = UnitSet((Unit("image.blocks.0.resid_post", 0, "feature", "s"),), "A")
    with pytest.raises(InputError, match=r"saes\['s'\] has d_in=5"):
        concept_intervention(pair, feat, eval_data=ev, saes={"s": small}, null=0, pvalues=False)
    with pytest.raises(InputError, match="concept 'D'"):
        concept_intervention(pair, _planted(0), concept="D", eval_data=ev, null=0, pvalues=False)
    with pytest.raises(InputError, match="alpha"):
        concept_intervention(pair, _planted(0), mode="steer", eval_data=ev, null=0, pvalues=False)
    acts = unit_activations(pair, images=ev.images, hooks=NEURONS)
    scores = vf.scoring.score_units(
        acts.values, ev.labels, concepts=vf.scoring.ConceptSet.make(ev.concepts), meta=acts.meta()
    )
    with pytest.raises(InputError, match="concept 'red' is not in the scoring result"):
        top_units(scores, "red")


# ---------------------------------------------------------------- the bundled model

COLORS = ("red", "green", "blue", "yellow", "purple", "orange", "cyan", "white")


@pytest.fixture(scope="module")
def bundled() -> tuple[Any, Any, EvalSet]:
    pair = vf.load_pair("synthetic:tiny").eval()
    train = EvalSet.synthetic(300, seed=0)
    acts = unit_activations(
        pair, images=train.images, hooks="image.blocks.*.mlp.post", reduce="max"
    )
    cols = [train.concepts.index(c) for c in COLORS]
    scores = vf.scoring.score_units(
        acts.values, train.labels[:, cols],
        concepts=vf.scoring.ConceptSet.make(COLORS, ["color"] * 8), meta=acts.meta(),
    )  # fmt: skip
    ev = EvalSet.synthetic(96, seed=1, max_objects=1).select(COLORS)
    return pair, scores, ev


@pytest.mark.slow
def test_bundled_red_neurons_are_targeted(bundled: tuple[Any, Any, EvalSet]) -> None:
    """Mean-ablating the 50 image MLP neurons most selective for red (per-image max over
    patch tokens) drops red's zero-shot margin beyond 100 random sets of the same layer mix
    and >= 3x the other colors' mean drop; zero-shot accuracy stays put."""
    pair, scores, ev = bundled
    units = top_units(scores, "red", n=50)
    assert len(units) == 50 and {u.hook for u in units} <= {
        f"image.blocks.{i}.mlp.post" for i in range(4)
    }
    r = concept_intervention(pair, units, eval_data=ev, null=100, seed=0)
    assert r.null is not None and r.null.pvalue is not None
    drop = -r.target.delta["margin"]
    assert r.null.pvalue["margin"] < 0.01
    assert drop >= 3 * max(-r.others.mean["margin"], 0.0)
    assert abs(r.overall.delta["zero_shot"]) <= 0.02
    assert r.targeted is True


@pytest.mark.slow
def test_bundled_white_neurons_are_not_targeted(bundled: tuple[Any, Any, EvalSet]) -> None:
    """The pattern is a finding, not a given: ablating white's top 50 neurons lowers the
    other colors' margins more than white's own, and the verdict says so."""
    pair, scores, ev = bundled
    r = concept_intervention(
        pair, top_units(scores, "white", n=50), eval_data=ev, null=0, pvalues=False
    )
    assert r.others.mean["margin"] < r.target.delta["margin"] < 0
    assert r.verdict["exceeds_others"] is False and r.targeted is None


@pytest.mark.slow
def test_bundled_color_panel_is_a_finding(bundled: tuple[Any, Any, EvalSet]) -> None:
    """The whole panel of the README's table, as the tool reports it.

    The issue expected >= 6 of the 8 colors to pass "p < 0.01 against 100 random sets and
    a margin drop >= 3x the other colors' mean drop". On the bundled model 2 do (red,
    blue) and the verdict (p < 0.05, beyond the others) calls 4 targeted; zero-shot
    accuracy never moves. This pins that finding, so a change to scoring, unit selection
    or the null that moves it has to update the README's table with it.
    """
    pair, scores, ev = bundled
    strict, targeted = set(), set()
    for color in COLORS:
        r = concept_intervention(pair, top_units(scores, color, n=50), eval_data=ev, null=100)
        assert r.null is not None and r.null.pvalue is not None
        drop, others = -r.target.delta["margin"], -r.others.mean["margin"]
        if r.null.pvalue["margin"] < 0.01 and drop > 0 and drop >= 3 * max(others, 0.0):
            strict.add(color)
        if r.targeted:
            targeted.add(color)
        assert abs(r.overall.delta["zero_shot"]) <= 0.02, color
    assert strict == {"red", "blue"}
    assert targeted == {"red", "blue", "orange", "cyan"}


@pytest.fixture(scope="module")
def tiny() -> Any:
    return vf.load_pair("synthetic:tiny").eval()


@pytest.mark.parametrize("mode", ["ablate", "steer"])
def test_heads_and_text_units_batched_equals_loop(tiny: Any, mode: str) -> None:
    """Image heads and text neurons together (both towers edited), nulls included."""
    pair = tiny
    ev = EvalSet.synthetic(8, seed=2)
    units = UnitSet(
        (
            Unit("image.blocks.2.attn.z", 1, "head"),
            Unit("image.blocks.3.attn.head_out", 0, "head"),
            Unit("text.blocks.1.mlp.post", 17, "neuron"),
        ),
        concept="red",
        model="synthetic:tiny",
    )
    kw: dict[str, Any] = dict(mode=mode, eval_data=ev, null=5, pvalues=False, seed=5)
    if mode == "steer":
        kw["alpha"] = 3.0
    a = concept_intervention(pair, units, max_rows=100, **kw)
    b = concept_intervention(pair, units, method="serial", **kw)
    assert a.null is not None and b.null is not None
    for m in ("margin", "score", "i2t@1"):
        assert a.target.delta[m] == pytest.approx(b.target.delta[m], abs=1e-5)
        assert_close(a.null.target[m], b.null.target[m], dtype=torch.float32)
    assert a.target.delta["score"] != 0.0


def test_unit_activations_heads_and_sae_features(toy: tuple[HookedPair, EvalSet]) -> None:
    pair, ev = toy
    sae = vf.sae.TopKSAE(d_in=8, n_latents=12, k=3)
    hooks = ["image.blocks.0.attn.head_out", "image.blocks.0.resid_post", NEURONS]
    acts = unit_activations(
        pair, images=ev.images, hooks=hooks, saes={"image.blocks.0.resid_post": sae}
    )
    kinds = [(s.hook, s.size, s.kind, s.sae) for s in acts.layout.segments]
    assert kinds == [  # model order
        ("image.blocks.0.attn.head_out", 1, "head", None),
        (NEURONS, 6, "neuron", None),
        ("image.blocks.0.resid_post", 12, "feature", "image.blocks.0.resid_post"),
    ]
    # the feature columns are the per-image max of the SAE's dense codes
    with torch.no_grad():
        x = pair.run(images=ev.images, cache=["image.blocks.0.resid_post"]).cache[
            "image.blocks.0.resid_post"
        ]
        val, idx = sae.encode(x.reshape(-1, 8))
    dense = torch.zeros(x.shape[0] * x.shape[1], 12).scatter_(1, idx, val).view(x.shape[0], -1, 12)
    assert_close(acts.values[:, 7:19], dense.amax(1).numpy(), dtype=torch.float32, ulps=8)
    scores = vf.scoring.score_units(
        acts.values, ev.labels, concepts=vf.scoring.ConceptSet.make(ev.concepts), meta=acts.meta()
    )
    assert top_units(scores, "A", n=1, kinds=["neuron"]).units == (Unit(NEURONS, 0, "neuron"),)
    feats = top_units(scores, "A", n=2, hooks="*resid_post")
    assert all(u.kind == "feature" and u.sae == "image.blocks.0.resid_post" for u in feats)


def test_eval_images_of_the_wrong_size_are_an_error(toy: tuple[HookedPair, EvalSet]) -> None:
    from vlmfast.models.testing import tiny_pair

    _, ev = toy
    pair = tiny_pair("ViT-B-32").eval()  # 96 x 96 images; the toy eval set is 4 x 4
    units = UnitSet((Unit("image.blocks.0.mlp.post", 0),), "A")
    with pytest.raises(InputError, match="eval_data images are"):
        concept_intervention(pair, units, eval_data=ev, null=0, pvalues=False)
