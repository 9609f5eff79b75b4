"""Feature level on planted truth: split, Bridge Score and the invariant fraction."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vlmfast import crossmodal as xm
from vlmfast.errors import InputError


@pytest.fixture(scope="module")
def planted() -> xm.PlantedCrossModal:
    return xm.planted_pairs(n=1500, d=32, n_concepts=8, shared_fraction=0.5, seed=0)


@pytest.fixture(scope="module", params=[False, True], ids=["gap-kept", "gap-removed"])
def result(
    request: pytest.FixtureRequest, planted: xm.PlantedCrossModal
) -> xm.SharedDictionaryResult:
    p = planted
    return xm.shared_dictionary_from_rows(
        p.image_rows,
        p.text_rows,
        p.image_labels,
        p.text_labels,
        encode=p.truth_features,
        remove_gap=request.param,
        n_boot=100,
        n_null=100,
    )


def test_recovers_planted_invariant_fraction(
    planted: xm.PlantedCrossModal, result: xm.SharedDictionaryResult
) -> None:
    truth = planted.invariant_fraction
    for t in (0.7, 0.8, 0.9):
        pt = result.invariant.at(t)
        assert pt.fraction is not None and pt.ci_low is not None and pt.ci_high is not None
        assert pt.ci_low <= truth <= pt.ci_high
        # well above the feature-permutation null
        assert pt.null_mean is not None and pt.null_mean < 0.15
        assert pt.pvalue is not None and pt.pvalue < 0.05
    # at a moderate cut the recovery is exact: the shared features, and only they
    cells = set(result.invariant.invariant_cells[0.8])
    kinds = planted.feature_kind
    want = {
        (f, int(planted.feature_concept[f])) for f in range(len(kinds)) if kinds[f] == "bimodal"
    }
    assert cells == want
    assert result.gap_removed == (result.gap_means is not None)
    if result.gap_means is not None:
        assert result.gap_means.gap > 3.0  # the planted offsets: two orthogonal length-3 vectors
    json.dumps(result.to_dict())


def test_modality_split_classifies_planted_features(
    planted: xm.PlantedCrossModal, result: xm.SharedDictionaryResult
) -> None:
    assert result.split.label == planted.feature_kind
    bim = np.array([k == "bimodal" for k in planted.feature_kind])
    s = result.split
    assert np.all(np.abs(s.split[bim] - 0.5) < 0.03)
    assert np.all((s.ci_low <= s.split + 1e-12) & (s.split <= s.ci_high + 1e-12))
    img_only = np.array([k == "image-only" for k in planted.feature_kind])
    assert np.all(s.ci_low[img_only] > 0.95) and np.all(s.pvalue[img_only] < 0.05)
    assert result.split.counts()["image-only"] == 4


def test_bridge_high_for_shared_low_for_specific(
    planted: xm.PlantedCrossModal, result: xm.SharedDictionaryResult
) -> None:
    bim = np.array([k == "bimodal" for k in planted.feature_kind])
    b = result.bridge
    assert np.all(b.bridge[bim] > 0.3) and np.all(b.ci_low[bim] > 0.2)
    assert np.all(b.pvalue[bim] < 0.05)
    spec = b.bridge[~bim]
    assert np.all(np.isnan(spec) | (spec < 0.1))


def test_mismatched_pairs_are_a_negative_control(planted: xm.PlantedCrossModal) -> None:
    """Shuffling which caption goes with which image kills the Bridge Score, not the split."""
    p = planted
    perm = np.random.default_rng(9).permutation(len(p.text_rows))
    img, txt = p.truth_features(p.image_rows), p.truth_features(p.text_rows[perm])
    b = xm.bridge_scores(img, txt, n_boot=50, n_null=50)
    bim = np.array([k == "bimodal" for k in p.feature_kind])
    assert np.all(np.abs(b.bridge[bim]) < 0.08)
    assert np.all(b.pvalue[bim] > 0.01)
    s = xm.modality_split(img, txt, n_boot=50)
    assert s.label == p.feature_kind


def test_bridge_mismatched_is_the_exact_expectation() -> None:
    rng = np.random.default_rng(0)
    a = np.maximum(rng.standard_normal((30, 3)), 0)
    b = np.maximum(rng.standard_normal((30, 3)) + a, 0)
    s = xm.bridge_scores(a, b, n_boot=5, n_null=5)
    norm = np.sqrt((a * a).mean(0) * (b * b).mean(0))
    off = ~np.eye(30, dtype=bool)
    brute = np.array([np.outer(a[:, f], b[:, f])[off].mean() for f in range(3)]) / norm
    np.testing.assert_allclose(s.mismatched, brute, rtol=1e-10)
    np.testing.assert_allclose(s.matched, (a * b).mean(0) / norm, rtol=1e-10)


def test_random_features_have_no_invariant_fraction(planted: xm.PlantedCrossModal) -> None:
    """Features along directions that carry no concept: the denominator is 0 -> undefined."""
    p = planted
    spare = np.linalg.qr(np.column_stack([p.feature_directions.T, np.eye(32)]))[0][:, 12:20].T

    def encode(rows: np.ndarray) -> np.ndarray:
        return np.maximum(rows @ spare.T - 0.2, 0.0)

    r = xm.shared_dictionary_from_rows(
        p.image_rows,
        p.text_rows,
        p.image_labels,
        p.text_labels,
        encode,
        remove_gap=True,
        n_boot=20,
        n_null=20,
    )
    for pt in r.invariant.points:
        assert pt.n_selective_either == 0
        assert pt.fraction is None and pt.ci_low is None and pt.reason
        assert pt.to_dict()["fraction"] is None


def test_fraction_tracks_the_planted_share() -> None:
    for share, truth in ((1.0, 1.0), (0.25, 2 / 14)):
        p = xm.planted_pairs(n=1000, d=32, n_concepts=8, shared_fraction=share, seed=5)
        assert p.invariant_fraction == pytest.approx(truth)
        r = xm.analyze_shared_dictionary(
            p.truth_features(p.image_rows),
            p.truth_features(p.text_rows),
            p.image_labels,
            p.text_labels,
            n_boot=20,
            n_null=50,
        )
        pt = r.invariant.at(0.8)
        assert pt.fraction == pytest.approx(truth)


def test_subset_restricts_every_statistic(planted: xm.PlantedCrossModal) -> None:
    p = planted
    img, txt = p.truth_features(p.image_rows), p.truth_features(p.text_rows)
    single = p.image_labels.sum(1) == 1
    r = xm.analyze_shared_dictionary(
        img, txt, p.image_labels, p.text_labels, subset=single, n_boot=20, n_null=20
    )
    sub = xm.analyze_shared_dictionary(
        img[single],
        txt[single],
        p.image_labels[single],
        p.text_labels[single],
        n_boot=20,
        n_null=20,
    )
    assert r.n_pairs == int(single.sum()) < len(single)
    np.testing.assert_array_equal(r.image_auroc, sub.image_auroc)
    np.testing.assert_array_equal(r.bridge.bridge, sub.bridge.bridge)
    with pytest.raises(InputError, match="subset mask has shape"):
        xm.analyze_shared_dictionary(img, txt, p.image_labels, p.text_labels, subset=single[:5])


def test_captions_are_scored_against_caption_labels() -> None:
    """Captions name a subset of what the image shows: text rows use the caption labels."""
    p = xm.planted_pairs(n=1000, d=32, n_concepts=8, caption_drop=0.3, seed=6)
    r = xm.analyze_shared_dictionary(
        p.truth_features(p.image_rows),
        p.truth_features(p.text_rows),
        p.image_labels,
        p.text_labels,
        n_boot=20,
        n_null=20,
    )
    f = np.arange(len(p.feature_kind))
    c = p.feature_concept
    bim = np.array([k == "bimodal" for k in p.feature_kind])
    assert np.all(r.text_auroc[f[bim], c[bim]] > 0.97)
    assert np.all(r.image_auroc[f[bim], c[bim]] > 0.97)
    # fewer captions than images name the concept: the split leans to the image side
    assert np.all(r.split.split[bim] > 0.55)
    assert r.invariant.at(0.9).fraction == pytest.approx(p.invariant_fraction)


def test_split_pvalue_matches_the_swap_null_and_rare_features_are_undecided() -> None:
    from vlmfast.crossmodal.feature_pairs import sign_flip_pvalue

    rng = np.random.default_rng(2)
    n = 400
    a = np.maximum(rng.standard_normal((n, 3)), 0)
    b = np.maximum(rng.standard_normal((n, 3)), 0)
    b[:, 1] *= 0.8  # a mild image lean
    rare = np.zeros((n, 1))
    rare[:2] = 1.0  # fires on two images only: split 1.0 but no evidence
    a, b = np.hstack([a, rare]), np.hstack([b, np.zeros((n, 1))])
    swaps = rng.random((4000, n)) < 0.5
    obs = np.abs((a - b).sum(0))
    null = np.abs(np.where(swaps[:, :, None], b - a, a - b).sum(1))
    mc = (null >= obs - 1e-12).mean(0)
    np.testing.assert_allclose(sign_flip_pvalue(a, b)[:3], mc[:3], atol=0.03)
    s = xm.modality_split(a, b, n_boot=50)
    assert s.split[3] == 1.0 and s.label[3] == "undecided"
    assert s.label[0] == "bimodal"
