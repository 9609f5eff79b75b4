"""Per-feature moments of matched image/caption activations: the one pass behind the
streaming shared-dictionary statistics (:mod:`vlmfast.crossmodal.streaming`).

For every feature f, with ``a_i`` its activation on pair i's image row and ``b_i`` on
its caption row, the pass sums the 14 monomials of :data:`MOMENTS` (``"aab"`` is
``Σ_i a_i² b_i``) up to the fourth order. The modality split, the Bridge Score, their
nulls and delta-method intervals are closed-form functions of these sums, so one pass
over top-k codes (only the pairs where f fires touch its sums) replaces the bootstrap's
``B`` passes. :func:`stream_pair_moments` runs in Rust (``vlmfast._native.PairMoments``);
:func:`pair_moments_reference` is its numpy twin on dense activations.

:func:`score_shared_pairs` is the one native call behind
:func:`~vlmfast.crossmodal.shared_dictionary_stats`: it buckets each modality's
nonzeros by feature once (the exact scorer's counting sort), sums the moments by
merging each feature's image and text buckets by pair before they are sorted, then
scores both buckets against their labels. Its moments equal
:func:`stream_pair_moments`' (each feature's sums in pair order, whatever the thread
count) and its AUROC tables equal :func:`vlmfast.stats.score_sparse` on each side.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from vlmfast.errors import InputError, ShapeError
from vlmfast.stats.scores import UnitScores

Array = npt.NDArray[np.float64]

MOMENTS: tuple[str, ...] = (
    "a", "b", "aa", "bb", "ab", "aaa", "bbb", "aab", "abb", "aabb", "aaab", "abbb", "aaaa", "bbbb",
)  # fmt: skip
"""The summed monomials, in column order (the same order as the Rust core's)."""

PairChunk = tuple[Any, Any, Any, Any]
"""One chunk of matched pairs' top-k codes: ``(image_indices[n, k], image_values[n, k],
text_indices[n, k'], text_values[n, k'])``; row i of both sides is pair i."""


@dataclass
class PairMomentSums:
    """Sums of :data:`MOMENTS` per feature over ``n`` matched pairs."""

    sums: Array
    """``[F, 14]`` float64, columns in :data:`MOMENTS` order."""
    n: int
    """Pairs summed over."""

    def __getitem__(self, name: str) -> Array:
        """The ``[F]`` column of one monomial (``m["ab"]`` is ``Σ a b`` per feature)."""
        try:
            return self.sums[:, MOMENTS.index(name)]
        except ValueError:
            raise KeyError(f"{name!r} is not a moment; the moments are {MOMENTS}") from None

    @property
    def n_features(self) -> int:
        return int(self.sums.shape[0])


def pair_moments_reference(image_acts: Any, text_acts: Any) -> PairMomentSums:
    """Returns the moments of dense nonnegative activations ``[n, F]`` of matched pairs (numpy).

    Raises:
        ShapeError: the two arrays are not 2-D of one shape.
    """
    a = np.asarray(image_acts, dtype=np.float64)
    b = np.asarray(text_acts, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape:
        raise ShapeError(
            f"image and text activations must be [pairs, features] of one shape, got "
            f"{a.shape} and {b.shape}"
        )
    cols = []
    for name in MOMENTS:
        pa, pb = name.count("a"), name.count("b")
        cols.append((a**pa * b**pb).sum(0))
    return PairMomentSums(np.stack(cols, axis=1), int(a.shape[0]))


def _codes(indices: Any, values: Any, side: str) -> tuple[Any, Any]:
    idx = np.ascontiguousarray(np.asarray(indices), dtype=np.int64)
    val = np.ascontiguousarray(np.asarray(values), dtype=np.float32)
    if idx.ndim != 2 or idx.shape != val.shape:
        raise ShapeError(
            f"{side} codes: indices {idx.shape} and values {val.shape} must be one [n, k] shape"
        )
    return idx, val


def stream_pair_moments(chunks: Iterable[PairChunk], n_features: int) -> PairMomentSums:
    """Returns the moments of matched pairs' top-k codes, streamed chunk by chunk (Rust).

    Raises:
        InputError: ``n_features < 1``; an index outside ``[0, n_features)``, a negative
            or non-finite activation, or image and text chunks of different row counts
            (the message names the side).
        ShapeError: indices and values of different shapes.
    """
    from vlmfast import _native

    if int(n_features) < 1:
        raise InputError(f"n_features must be >= 1, got {n_features}")
    acc = _native.PairMoments(int(n_features))
    for img_idx, img_val, txt_idx, txt_val in chunks:
        ii, iv = _codes(img_idx, img_val, "image")
        ti, tv = _codes(txt_idx, txt_val, "text")
        acc.push(ii, iv, ti, tv)
    return PairMomentSums(np.asarray(acc.sums()), int(acc.pairs))


def read_pairs(chunks: Iterable[PairChunk]) -> PairChunk:
    """Returns all ``chunks`` of matched pairs as one :data:`PairChunk` (int64 indices,
    float32 values, C-contiguous; ``[0, 0]`` arrays for no chunk; one chunk is not copied).

    Raises:
        InputError: image and text chunks of different row counts, or a side whose
            ``k`` changes from chunk to chunk.
        ShapeError: indices and values of different shapes.
    """
    kept: list[list[Any]] = [[], [], [], []]
    for img_idx, img_val, txt_idx, txt_val in chunks:
        ii, iv = _codes(img_idx, img_val, "image")
        ti, tv = _codes(txt_idx, txt_val, "text")
        if ii.shape[0] != ti.shape[0]:
            raise InputError(
                f"image codes have {ii.shape[0]} rows and text codes {ti.shape[0]}: rows "
                "must be matched pairs"
            )
        for store, x, side in zip(kept, (ii, iv, ti, tv), ("image", "image", "text", "text")):
            if store and store[0].shape[1] != x.shape[1]:
                raise InputError(
                    f"{side} codes have k={x.shape[1]} in one chunk and k={store[0].shape[1]} "
                    "in the first: every chunk of a side needs the same k"
                )
            store.append(x)
    empty = (np.zeros((0, 0), np.int64), np.zeros((0, 0), np.float32))
    ii, iv, ti, tv = (
        (xs[0] if len(xs) == 1 else np.concatenate(xs)) if xs else empty[i % 2]
        for i, xs in enumerate(kept)
    )
    return ii, iv, ti, tv


def score_shared_pairs(
    pairs: PairChunk, image_labels: Any, text_labels: Any, n_features: int, *, with_se: bool = False
) -> tuple[UnitScores, UnitScores, PairMomentSums]:
    """Returns both modalities' exact scores and the pairs' moments from one native call.

    ``pairs``: one :data:`PairChunk` of all pairs (:func:`read_pairs`); the labels are
    ``[pairs, C]`` bool, C-contiguous. Returns ``(image scores, text scores, moments)``:
    the scores (AUROC in [0, 1]) as :func:`vlmfast.stats.score_sparse` with
    ``stats=False, top_n=0`` (DeLong ``se`` with ``with_se``), the moments as
    :func:`stream_pair_moments`.

    Raises:
        InputError: ``n_features < 1``; an index outside ``[0, n_features)``, a negative
            or non-finite activation, a feature twice in a row, labels whose row count is
            not the number of pairs (the message names the side).
    """
    from vlmfast import _native

    if int(n_features) < 1:
        raise InputError(f"n_features must be >= 1, got {n_features}")
    ii, iv = _codes(pairs[0], pairs[1], "image")
    ti, tv = _codes(pairs[2], pairs[3], "text")
    img, txt, sums, n = _native.score_shared_codes(
        ii, iv, ti, tv, image_labels, text_labels, int(n_features), with_se=with_se
    )
    return (
        UnitScores.from_native(img),
        UnitScores.from_native(txt),
        PairMomentSums(np.asarray(sums), int(n)),
    )


__all__ = [
    "MOMENTS",
    "PairChunk",
    "PairMomentSums",
    "pair_moments_reference",
    "read_pairs",
    "score_shared_pairs",
    "stream_pair_moments",
]
