"""The patch rule: which patches a stored object box makes positive (fast path and
reference), CLS and pooled rows excluded."""

from __future__ import annotations

import numpy as np

from vlmfast.store.patch_grid import PatchGrid, patch_labels, patch_labels_reference
from vlmfast.store.records import BoxRows

GRID = PatchGrid(image_size=64, patch_size=16, class_token=True)  # the bundled model's
Q = 0.25  # one patch side, normalised


def _one(box, concepts=(True,)):
    return BoxRows(np.array([7], np.int64), np.array([box], np.float32), np.array([concepts], bool))


def _hit_patches(box):
    """Patches (row-major) the rule makes positive for one box."""
    pos = np.arange(1, 17)
    lab, keep = patch_labels(np.full(16, 7), pos, _one(box), GRID)
    assert keep.all()
    return set(np.flatnonzero(lab[:, 0]).tolist())


def test_rule_centre_in_patch():
    # a small box inside patch (1, 2): centre there, covers 1/16 of it
    assert _hit_patches([2 * Q + 0.05, Q + 0.05, 2 * Q + 0.1, Q + 0.1]) == {1 * 4 + 2}


def test_rule_quarter_cover_without_centre():
    # centre in patch (1, 1); it covers exactly a quarter of patch (0, 0) and more of
    # (0, 1), (1, 0): those are positive too; (2, *) and (*, 2) get less than a quarter
    box = [Q / 2, Q / 2, 1.5 * Q + 0.01, 1.5 * Q + 0.01]
    assert _hit_patches(box) == {0, 1, 4, 5}


def test_rule_neither():
    # a thin box over patches (0, 0) and (0, 1), centre in (0, 1): it covers under a
    # quarter of (0, 0) (0.05 x 0.05 of 0.25 x 0.25) and holds no centre there
    box = [0.2, 0.0, 0.3, 0.05]
    assert _hit_patches(box) == {1}


def test_cls_and_pooled_rows_excluded():
    lab, keep = patch_labels(
        np.array([7, 7, 7, 7]), np.array([0, -1, 1, 16]), _one([0, 0, 0.1, 0.1]), GRID
    )
    assert keep.tolist() == [False, False, True, True]
    assert lab[:, 0].tolist() == [True, False]
    no_cls = PatchGrid(64, 16, class_token=False)
    lab, keep = patch_labels(np.array([7, 7]), np.array([0, 16]), _one([0, 0, 0.1, 0.1]), no_cls)
    assert keep.tolist() == [True, False] and lab[:, 0].tolist() == [True]


def test_fast_path_matches_reference():
    rng = np.random.default_rng(0)
    n_boxes, c = 40, 5
    a, b = rng.random((n_boxes, 2)), rng.random((n_boxes, 2))
    boxes = BoxRows(
        np.sort(rng.integers(0, 6, n_boxes)),
        np.concatenate([np.minimum(a, b), np.maximum(a, b)], axis=1).astype(np.float32),
        rng.random((n_boxes, c)) < 0.4,
    )
    grid = PatchGrid(70, 14, class_token=True)  # 5 x 5
    sample = np.repeat(np.arange(7), 27)
    position = np.tile(np.arange(-1, 26), 7)
    got, keep = patch_labels(sample, position, boxes, grid)
    ref, ref_keep = patch_labels_reference(sample, position, boxes, grid)
    assert np.array_equal(keep, ref_keep)
    assert np.array_equal(got, ref)
    assert got.any() and not got.all()
