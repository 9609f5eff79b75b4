"""The one-call shared-dictionary pass (Rust: both modalities' AUROCs plus the pairs'
moments read off the scorer's buckets) against its reference twins: the dense numpy
moments, the dense AUROC/DeLong references and the one-modality scorer, on ragged k,
tie-heavy values with exact zeros, silent and one-sided features; bad inputs named."""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
import pytest
import torch

from tolerance import assert_close
from vlmfast.crossmodal.pair_moments import (
    pair_moments_reference,
    read_pairs,
    score_shared_pairs,
    stream_pair_moments,
)
from vlmfast.crossmodal.streaming import shared_dictionary_stats
from vlmfast.errors import InputError
from vlmfast.stats import score_sparse
from vlmfast.stats.reference import auroc_reference, codes_to_dense

F = 12  # feature F-1 never fires; feature F-2 fires on image rows only


def _side(n: int, k: int, rng: np.random.Generator, ties: bool, f_max: int) -> tuple[Any, Any]:
    idx = np.argsort(rng.random((n, f_max)), axis=1)[:, :k].astype(np.int64)
    val = rng.gamma(2.0, 1.0, (n, k)).astype(np.float32)
    if ties:
        val = (np.round(val * 2) / 2).astype(np.float32)  # many exact ties and zeros
    return idx, val


def _case(n: int, seed: int, ties: bool) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    ii, iv = _side(n, 3, rng, ties, F - 1)  # image rows may use feature F-2
    ti, tv = _side(n, 5, rng, ties, F - 2)  # ragged k; text never uses F-2
    labels = [rng.random((n, 4)) < r for r in (0.2, 0.6)]  # one side's concepts flip
    for lab in labels:
        lab[:, 3] = False
        lab[: min(n, 1), 3] = True  # a concept with a single positive
    return dict(ii=ii, iv=iv, ti=ti, tv=tv, img_lab=labels[0], txt_lab=labels[1])


def _finite_close(got: Any, want: Any) -> None:
    ok = ~np.isnan(want)
    np.testing.assert_array_equal(np.isnan(got), ~ok)
    assert_close(got[ok], want[ok], dtype=torch.float64)


def _chunks(c: dict[str, Any], size: int) -> Any:
    n = c["ii"].shape[0]
    return [tuple(c[k][s : s + size] for k in ("ii", "iv", "ti", "tv")) for s in range(0, n, size)]


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("n", [2, 37, 300])
def test_pass_equals_its_reference_twins(n: int, ties: bool) -> None:
    c = _case(n, seed=n, ties=ties)
    pairs = (c["ii"], c["iv"], c["ti"], c["tv"])
    img, txt, m = score_shared_pairs(pairs, c["img_lab"], c["txt_lab"], F, with_se=True)
    a, b = codes_to_dense(c["ii"], c["iv"], F), codes_to_dense(c["ti"], c["tv"], F)
    assert m.n == n and m.sums.shape == (F, 14)
    assert_close(m.sums, pair_moments_reference(a, b).sums, dtype=torch.float64)
    assert not m.sums[F - 1].any() and m["b"][F - 2] == 0 and m["ab"][F - 2] == 0
    for got, idx, val, dense, lab in (
        (img, c["ii"], c["iv"], a, c["img_lab"]),
        (txt, c["ti"], c["tv"], b, c["txt_lab"]),
    ):
        one = score_sparse(idx, val, lab, F, with_se=True, stats=False, top_n=0)
        np.testing.assert_array_equal(got.auroc, one.auroc)  # the same scorer, bit for bit
        np.testing.assert_array_equal(got.se, one.se)
        np.testing.assert_array_equal(got.ties, one.ties)
        ref = auroc_reference(dense, lab)
        _finite_close(got.auroc, ref)
        assert not np.isnan(ref[:, 3]).any()  # the single-positive concept is scored
        assert (got.auroc[F - 1][~np.isnan(ref[F - 1])] == 0.5).all()  # silent feature


def test_results_do_not_depend_on_chunking() -> None:
    c = _case(200, seed=3, ties=True)
    rng = np.random.default_rng(4)
    img_lab, txt_lab = rng.random((200, 2)) < 0.3, rng.random((200, 2)) < 0.3
    runs = [
        shared_dictionary_stats(partial(_chunks, c, size), img_lab, txt_lab, F, with_se=True)
        for size in (1, 7, 200)
    ]
    first = runs[0]
    for st in runs[1:]:
        for name in ("split", "pvalue", "ci_low", "ci_high"):
            np.testing.assert_array_equal(getattr(st.split, name), getattr(first.split, name))
        np.testing.assert_array_equal(st.bridge.bridge, first.bridge.bridge)
        np.testing.assert_array_equal(st.image_auroc, first.image_auroc)
        assert st.text_se is not None and first.text_se is not None
        np.testing.assert_array_equal(st.text_se, first.text_se)
    streamed = stream_pair_moments(_chunks(c, 7), F)
    _, _, m = score_shared_pairs(read_pairs(_chunks(c, 7)), img_lab, txt_lab, F)
    assert_close(m.sums, streamed.sums, dtype=torch.float64)


def test_empty_and_single_chunk_reads() -> None:
    ii, iv, ti, tv = read_pairs([])
    assert ii.shape == (0, 0) and ii.dtype == np.int64 and tv.dtype == np.float32
    lab = np.zeros((0, 2), bool)
    img, _, m = score_shared_pairs((ii, iv, ti, tv), lab, lab, 3)
    assert m.n == 0 and not m.sums.any() and np.isnan(img.auroc).all()
    with pytest.raises(InputError, match="at least 2 pairs"):
        shared_dictionary_stats(lambda: [], lab, lab, 3)
    c = _case(5, seed=2, ties=False)
    assert np.shares_memory(read_pairs(_chunks(c, 5))[0], c["ii"])  # one chunk: no copy


def test_bad_inputs_name_the_side() -> None:
    c = _case(10, seed=1, ties=False)
    lab = np.zeros((10, 2), bool)

    def run(**bad: Any) -> None:
        pairs = tuple(bad.get(k, c[k]) for k in ("ii", "iv", "ti", "tv"))
        score_shared_pairs(pairs, lab, lab, F)

    dup = c["ti"].copy()
    dup[4, 1] = dup[4, 0]
    with pytest.raises(InputError, match=r"text codes: indices lists feature .* twice in row 4"):
        run(ti=dup)
    neg = c["iv"].copy()
    neg[2, 1] = -1
    with pytest.raises(InputError, match="image values has -1"):
        run(iv=neg)
    out = c["ti"].copy()
    out[0, 0] = 99
    with pytest.raises(InputError, match="text indices has value 99"):
        run(ti=out)
    with pytest.raises(InputError, match="n_features must be >= 1"):
        score_shared_pairs(read_pairs([]), lab[:0], lab[:0], 0)
    with pytest.raises(InputError, match="rows must be matched pairs"):
        read_pairs([(c["ii"], c["iv"], c["ti"][:5], c["tv"][:5])])
    narrow = (c["ii"][:, :2], c["iv"][:, :2], c["ti"], c["tv"])
    with pytest.raises(InputError, match="every chunk of a side needs the same k"):
        read_pairs([_chunks(c, 10)[0], narrow])
    with pytest.raises(InputError, match="image labels has 9 rows"):
        score_shared_pairs(read_pairs(_chunks(c, 10)), lab[:9], lab, F)
