"""Bad input to the cross-modal analyses: clear errors, undefined ratios."""

from __future__ import annotations

import numpy as np
import pytest

from vlmfast import crossmodal as xm
from vlmfast.errors import InputError, ShapeError


def test_widths_differ_names_hooks_and_widths() -> None:
    rng = np.random.default_rng(0)
    img, txt = rng.standard_normal((10, 8)), rng.standard_normal((10, 6))
    y = np.zeros((10, 2), bool)
    with pytest.raises(ShapeError, match=r"image\.embed.*width 8.*text\.embed.*width 6"):
        xm.shared_dictionary_from_rows(
            img, txt, y, y, encode=np.abs, image_name="image.embed", text_name="text.embed"
        )
    with pytest.raises(ShapeError, match=r"width 8.*width 6"):
        xm.remove_modality_gap(img, txt)
    with pytest.raises(ShapeError, match=r"width 8.*width 6"):
        xm.concept_transfer(img, txt, y, y)


def test_row_counts_differ() -> None:
    rng = np.random.default_rng(0)
    img, txt = rng.random((10, 4)), rng.random((9, 4))
    with pytest.raises(ShapeError, match=r"10 rows.*9"):
        xm.analyze_shared_dictionary(img, txt, np.zeros((10, 1), bool), np.zeros((10, 1), bool))
    with pytest.raises(ShapeError, match="same image-caption pair"):
        xm.concept_transfer(img, txt, np.zeros((10, 1), bool), np.zeros((9, 1), bool))


def test_label_columns_and_negative_activations() -> None:
    acts = np.ones((6, 3))
    with pytest.raises(ShapeError, match=r"2 concepts.*3"):
        xm.analyze_shared_dictionary(acts, acts, np.zeros((6, 2), bool), np.zeros((6, 3), bool))
    with pytest.raises(InputError, match="nonnegative"):
        xm.analyze_shared_dictionary(-acts, acts, np.zeros((6, 1), bool), np.zeros((6, 1), bool))


def test_empty_denominator_is_undefined_not_zero() -> None:
    auc = np.full((5, 3), 0.5)
    p = np.ones((5, 3))
    curve = xm.invariant_curve(auc, p, auc, p, thresholds=[0.7, 0.9], n_perm=10)
    for pt in curve.points:
        assert pt.fraction is None and pt.pvalue is None and pt.ci_low is None
        assert "no feature is selective" in pt.reason
        assert pt.n_selective_either == 0


def test_invariant_curve_shapes_and_thresholds() -> None:
    with pytest.raises(ShapeError, match="share one"):
        xm.invariant_curve(np.zeros((3, 2)), np.zeros((3, 2)), np.zeros((4, 2)), np.zeros((4, 2)))
    with pytest.raises(InputError, match="thresholds"):
        xm.invariant_curve(*[np.zeros((3, 2))] * 4, thresholds=[0.3])


def test_planted_width_too_small() -> None:
    with pytest.raises(InputError, match="d >= 14"):
        xm.planted_pairs(n=10, d=8, n_concepts=8, shared_fraction=0.5)
