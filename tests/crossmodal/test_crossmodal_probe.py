"""Concept level on planted truth: probe transfer is high for shared concepts only."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vlmfast import crossmodal as xm


@pytest.fixture(scope="module")
def planted() -> xm.PlantedCrossModal:
    return xm.planted_pairs(n=1200, d=32, n_concepts=8, shared_fraction=0.5, seed=3)


def test_generator_plants_what_it_says(planted: xm.PlantedCrossModal) -> None:
    p = planted
    assert p.image_rows.shape == p.text_rows.shape == (1200, 32)
    assert p.shared.sum() == 4
    np.testing.assert_allclose(p.image_directions[p.shared], p.text_directions[p.shared])
    # modality-specific directions are orthogonal across modalities
    cos = np.abs((p.image_directions[~p.shared] * p.text_directions[~p.shared]).sum(1))
    assert cos.max() < 1e-9
    # frequencies are varied and realised
    assert len(set(np.round(p.frequencies, 6))) == 8
    np.testing.assert_allclose(p.image_labels.mean(0), p.frequencies, atol=0.05)
    # the offset is a constant per modality: the gap between the modality means
    gap = np.linalg.norm(p.image_rows.mean(0) - p.text_rows.mean(0))
    assert gap > 0.9 * np.linalg.norm(p.image_offset - p.text_offset)
    assert p.invariant_fraction == pytest.approx(4 / 12)
    again = xm.planted_pairs(n=1200, d=32, n_concepts=8, shared_fraction=0.5, seed=3)
    np.testing.assert_array_equal(again.image_rows, p.image_rows)


def test_caption_drop_names_a_subset() -> None:
    p = xm.planted_pairs(n=800, d=24, n_concepts=6, caption_drop=0.4, seed=1)
    assert not (p.text_labels & ~p.image_labels).any()
    kept = p.text_labels.sum() / p.image_labels.sum()
    assert 0.5 < kept < 0.7


def test_transfer_high_for_shared_chance_for_specific(planted: xm.PlantedCrossModal) -> None:
    p = planted
    t = xm.concept_transfer(
        p.image_rows, p.text_rows, p.image_labels, p.text_labels, n_null=60, seed=0
    )
    for d in (t.image_to_text, t.text_to_image):
        # every concept is read within its own modality
        assert np.all(d.within_auroc > 0.95)
        assert np.all(d.auroc[p.shared] > 0.95)
        assert np.all(d.ci_low[p.shared] > 0.9)
        assert np.all(d.pvalue[p.shared] <= 1.0 / 61 + 1e-12)
        assert np.all(np.abs(d.auroc[~p.shared] - 0.5) < 0.2)
        # a specific concept's transfer is within the shuffled-label null
        assert np.all(d.pvalue[~p.shared] > 0.05)
        # the null sits at chance (a random probe direction is as often right as wrong)
        assert np.all(np.abs(d.null_mean - 0.5) < 0.08)
        assert abs(float(d.null_mean.mean()) - 0.5) < 0.03
    json.dumps(t.to_dict())


def test_no_shared_concept_means_no_transfer() -> None:
    p = xm.planted_pairs(n=800, d=32, n_concepts=6, shared_fraction=0.0, seed=4)
    t = xm.concept_transfer(
        p.image_rows, p.text_rows, p.image_labels, p.text_labels, n_null=40, seed=1
    )
    assert np.all(np.abs(t.image_to_text.auroc - 0.5) < 0.12)
    assert np.sum(t.image_to_text.pvalue < 0.01) <= 1


def test_concept_without_positives_is_undefined() -> None:
    p = xm.planted_pairs(n=400, d=24, n_concepts=4, seed=2)
    y = p.image_labels.copy()
    y[:, 0] = False
    t = xm.concept_transfer(p.image_rows, p.text_rows, y, y, n_null=10)
    assert np.isnan(t.image_to_text.auroc[0]) and np.isnan(t.image_to_text.pvalue[0])
    assert t.to_dict()["image_to_text"]["auroc"][0] is None
    assert np.isfinite(t.image_to_text.auroc[1:]).all()
