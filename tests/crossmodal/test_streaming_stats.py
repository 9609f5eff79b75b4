"""The streaming shared-dictionary statistics (Rust moments) against the in-memory
analysis: moments bit-for-bit up to summation order, split/bridge point estimates and
p-values equal, delta-method intervals beside the bootstrap's, bad inputs named."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from tolerance import assert_close
from vlmfast.crossmodal import bridge_scores, modality_split
from vlmfast.crossmodal.pair_moments import (
    pair_moments_reference,
    stream_pair_moments,
)
from vlmfast.crossmodal.streaming import (
    bridge_from_moments,
    shared_dictionary_stats,
    split_from_moments,
)
from vlmfast.errors import InputError
from vlmfast.stats import score_dense


def _codes(n: int, f: int, k: int, seed: int, *, ties: bool = False) -> tuple[Any, Any, Any]:
    rng = np.random.default_rng(seed)
    idx = np.stack([rng.choice(f - 1, k, replace=False) for _ in range(n)]).astype(np.int64)
    val = rng.gamma(2.0, 1.0, (n, k)).astype(np.float32)
    if ties:
        val = np.round(val).astype(np.float32)  # many exact ties and exact zeros
    dense = np.zeros((n, f))
    np.put_along_axis(dense, idx, val.astype(np.float64), 1)
    return idx, val, dense


def _pairs(n: int = 400, f: int = 24, seed: int = 0, ties: bool = False) -> dict[str, Any]:
    ii, iv, a = _codes(n, f, 3, seed, ties=ties)
    ti, tv, b = _codes(n, f, 5, seed + 1, ties=ties)  # ragged: k differs per side
    shared = np.random.default_rng(seed + 2).random(n) < 0.5
    # a feature firing on both rows of half the pairs (a bimodal, bridging feature)
    for arr_i, arr_v, dense in ((ii, iv, a), (ti, tv, b)):
        arr_i[shared, 0] = f - 1
        dense[shared] = 0.0
        np.put_along_axis(dense, arr_i, arr_v.astype(np.float64), 1)
    return dict(ii=ii, iv=iv, ti=ti, tv=tv, a=a, b=b)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("chunk", [1, 7, 400])
def test_rust_moments_equal_the_dense_reference(chunk: int, ties: bool) -> None:
    p = _pairs(ties=ties)
    chunks = [
        (
            p["ii"][s : s + chunk],
            p["iv"][s : s + chunk],
            p["ti"][s : s + chunk],
            p["tv"][s : s + chunk],
        )
        for s in range(0, 400, chunk)
    ]
    got = stream_pair_moments(chunks, 24)
    want = pair_moments_reference(p["a"], p["b"])
    assert got.n == want.n == 400
    assert_close(got.sums, want.sums, dtype=torch.float64)


def test_empty_stream_and_silent_features() -> None:
    m = stream_pair_moments([], 5)
    assert m.n == 0 and not m.sums.any()
    split = split_from_moments(m)
    assert split.label == ["inactive"] * 5 and np.isnan(split.split).all()


def test_split_and_bridge_match_the_in_memory_analysis() -> None:
    p = _pairs()
    m = stream_pair_moments([(p["ii"], p["iv"], p["ti"], p["tv"])], 24)
    fast, ref = split_from_moments(m), modality_split(p["a"], p["b"], n_boot=400, seed=1)
    assert_close(fast.split, ref.split, dtype=torch.float64)
    assert_close(fast.pvalue, ref.pvalue, dtype=torch.float64)
    assert fast.label == ref.label
    fb, rb = bridge_from_moments(m), bridge_scores(p["a"], p["b"], n_boot=400, n_null=0, seed=1)
    for name in ("bridge", "matched", "mismatched"):
        assert_close(getattr(fb, name), getattr(rb, name), dtype=torch.float64)
    # the delta-method intervals sit where the percentile bootstrap's do
    for f_ci, r_ci, est in ((fast, ref, fast.split), (fb, rb, fb.bridge)):
        ok = ~np.isnan(est)
        width_f = (f_ci.ci_high - f_ci.ci_low)[ok]
        width_r = (r_ci.ci_high - r_ci.ci_low)[ok]
        assert np.all(width_f > 0.6 * width_r) and np.all(width_f < 1.6 * width_r)
        assert np.all((f_ci.ci_low[ok] <= est[ok]) & (est[ok] <= f_ci.ci_high[ok]))
    # the bridging feature (f=23) is bimodal and bridges; re-pairing null rejects it
    assert fast.label[23] == "bimodal" and fb.bridge[23] > 0.3 and fb.pvalue[23] < 1e-6


def test_repairing_null_is_calibrated_for_independent_sides() -> None:
    """Captions unrelated to their images: the p-values of the re-pairing null are
    about uniform (pooled over 4 draws x 40 features)."""
    pooled = []
    for seed in range(4):
        p = _pairs(n=2000, f=40, seed=3 + seed)
        b = np.random.default_rng(9 + seed).permutation(p["b"])
        ti = np.broadcast_to(np.arange(40, dtype=np.int64), (2000, 40)).copy()
        m = stream_pair_moments([(p["ii"], p["iv"], ti, b.astype(np.float32))], 40)
        pv = bridge_from_moments(m).pvalue
        pooled.append(pv[~np.isnan(pv)])
    pv = np.concatenate(pooled)
    assert pv.size == 160
    assert 0.01 < (pv < 0.05).mean() < 0.15
    assert 0.3 < np.median(pv) < 0.7


def test_one_pass_stats_with_aurocs() -> None:
    p = _pairs()
    rng = np.random.default_rng(5)
    img_lab, txt_lab = rng.random((400, 3)) < 0.3, rng.random((400, 3)) < 0.3
    reads = []

    def chunks() -> Any:
        reads.append(1)
        for s in range(0, 400, 128):
            yield (
                p["ii"][s : s + 128],
                p["iv"][s : s + 128],
                p["ti"][s : s + 128],
                p["tv"][s : s + 128],
            )

    st = shared_dictionary_stats(chunks, img_lab, txt_lab, 24)
    assert len(reads) == 1 and st.n_pairs == 400
    assert_close(st.image_auroc, score_dense(p["a"], img_lab).auroc, dtype=torch.float64)
    assert_close(st.text_auroc, score_dense(p["b"], txt_lab).auroc, dtype=torch.float64)
    assert st.invariant(thresholds=(0.6,), n_perm=10).points[0].threshold == 0.6


def test_bad_inputs_name_the_side() -> None:
    p = _pairs(n=10)
    with pytest.raises(InputError, match="image indices has value 99"):
        bad = p["ii"].copy()
        bad[0, 0] = 99
        stream_pair_moments([(bad, p["iv"], p["ti"], p["tv"])], 24)
    with pytest.raises(InputError, match="text values has -1"):
        neg = p["tv"].copy()
        neg[2, 1] = -1
        stream_pair_moments([(p["ii"], p["iv"], p["ti"], neg)], 24)
    with pytest.raises(InputError, match="rows must be matched pairs"):
        stream_pair_moments([(p["ii"], p["iv"], p["ti"][:5], p["tv"][:5])], 24)
    with pytest.raises(InputError, match="text_labels has shape"):
        shared_dictionary_stats(
            lambda: [(p["ii"], p["iv"], p["ti"], p["tv"])],
            np.zeros((10, 2), bool),
            np.zeros((9, 2), bool),
            24,
        )
