"""Feature level: one dictionary over both modalities' rows of matched pairs.

:func:`analyze_shared_dictionary` takes nonnegative feature activations (SAE
codes, or any features) of the image rows and the text rows of matched pairs
(row i of each is one image-caption pair) and reports, per feature:

* its **modality split** with bootstrap interval, swap null and class
  (:func:`vlmfast.crossmodal.feature_pairs.modality_split`);
* its **image AUROC** (image rows vs image labels) and **caption AUROC** (text
  rows vs caption labels) per concept, exact, each scored *within* its modality
  (the modality gap makes pooled AUROCs meaningless), with DeLong standard
  errors and one-sided Mann–Whitney p-values (:func:`vlmfast.stats.score_dense`);
* its **Bridge Score** with interval and re-pairing null
  (:func:`vlmfast.crossmodal.feature_pairs.bridge_scores`);
* the **invariant-feature curve** over AUROC thresholds
  (:func:`vlmfast.crossmodal.invariant.invariant_curve`).

:func:`remove_modality_gap` subtracts each modality's mean row (the modality
gap) before the features are computed; :func:`shared_dictionary_from_rows` runs
an encoder on raw or gap-removed rows and records the means it subtracted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from vlmfast.crossmodal.checks import (
    check_matrix,
    check_pair_labels,
    check_pair_rows,
    concept_names,
    to_jsonable,
)
from vlmfast.crossmodal.feature_pairs import (
    BridgeScores,
    ModalitySplit,
    bridge_scores,
    modality_split,
)
from vlmfast.crossmodal.invariant import DEFAULT_THRESHOLDS, InvariantCurve, invariant_curve
from vlmfast.errors import InputError, ShapeError
from vlmfast.stats import score_dense

Array = npt.NDArray[np.float64]


@dataclass
class GapMeans:
    """The per-modality mean rows subtracted by :func:`remove_modality_gap`."""

    image_mean: Array
    """``[d]`` mean image row."""
    text_mean: Array
    """``[d]`` mean text row."""

    @property
    def gap(self) -> float:
        """Length of the modality gap ``‖image_mean − text_mean‖`` (rows' units)."""
        return float(np.linalg.norm(self.image_mean - self.text_mean))

    def to_dict(self) -> dict[str, Any]:
        """Returns a JSON-ready dict of both means and the gap's length."""
        return {
            "image_mean": to_jsonable(self.image_mean),
            "text_mean": to_jsonable(self.text_mean),
            "gap": self.gap,
        }


def remove_modality_gap(image_rows: Any, text_rows: Any) -> tuple[Array, Array, GapMeans]:
    """Returns ``(image_rows − image_mean, text_rows − text_mean, means)`` as float64.

    Row counts may differ here (the means are per modality); widths may not.

    Raises:
        ShapeError: the rows are not 2-D or their widths differ (both widths named).
        InputError: a modality has no rows.
    """
    img, txt = check_matrix(image_rows, "image rows"), check_matrix(text_rows, "text rows")
    if img.shape[1] != txt.shape[1]:
        raise ShapeError(
            f"image rows have width {img.shape[1]} but text rows have width {txt.shape[1]}: "
            "a shared space needs two hooks of equal width"
        )
    if not len(img) or not len(txt):
        raise InputError("cannot remove the modality gap of an empty modality")
    means = GapMeans(img.mean(0), txt.mean(0))
    return img - means.image_mean, txt - means.text_mean, means


@dataclass
class SharedDictionaryResult:
    """Everything :func:`analyze_shared_dictionary` measures, JSON-ready via :meth:`to_dict`."""

    concepts: list[str]
    n_pairs: int
    n_features: int
    split: ModalitySplit
    bridge: BridgeScores
    image_auroc: Array
    """``[F, C]`` exact AUROC of each feature on image rows for the image labels."""
    image_se: Array
    """``[F, C]`` DeLong standard error of ``image_auroc``."""
    image_pvalue: Array
    """``[F, C]`` one-sided Mann–Whitney p-value (AUROC > ½)."""
    text_auroc: Array
    """``[F, C]`` exact AUROC of each feature on text rows for the caption labels."""
    text_se: Array
    text_pvalue: Array
    invariant: InvariantCurve
    gap_removed: bool = False
    gap_means: GapMeans | None = None
    """The means subtracted before encoding (``None`` when the gap was kept or unknown)."""

    def to_dict(self, tables: bool = True) -> dict[str, Any]:
        """Returns a JSON-ready dict; ``tables=False`` leaves out the ``[F, C]`` AUROC tables."""
        out: dict[str, Any] = {
            "concepts": self.concepts,
            "n_pairs": self.n_pairs,
            "n_features": self.n_features,
            "gap_removed": self.gap_removed,
            "gap_means": None if self.gap_means is None else self.gap_means.to_dict(),
            "split": self.split.to_dict(),
            "bridge": self.bridge.to_dict(),
            "invariant": self.invariant.to_dict(),
        }
        if tables:
            for k in (
                "image_auroc",
                "image_se",
                "image_pvalue",
                "text_auroc",
                "text_se",
                "text_pvalue",
            ):
                out[k] = to_jsonable(getattr(self, k))
        return out


def _concept_tables(acts: Array, labels: npt.NDArray[np.bool_]) -> tuple[Array, Array, Array]:
    """Exact AUROC, DeLong SE and one-sided p-value ``[F, C]`` within one modality."""
    res = score_dense(acts, labels, with_se=True, stats=False, top_n=0)
    se = res.se if res.se is not None else np.full_like(res.auroc, np.nan)
    return res.auroc, se, res.pvalues("greater")


def _check_acts(image_acts: Any, text_acts: Any) -> tuple[Array, Array]:
    img, txt = check_pair_rows(
        image_acts, text_acts, image_name="image activations", text_name="text activations"
    )
    if (img < 0).any() or (txt < 0).any():
        raise InputError(
            "feature activations must be nonnegative (SAE codes, ReLU outputs): the modality "
            "split is a share of activation mass"
        )
    return img, txt


def select_pairs(subset: Any, n: int) -> npt.NDArray[np.int64]:
    """Pair indices from a bool mask ``[n]`` or an index array.

    Raises:
        InputError: a mask of the wrong length, an index outside ``[0, n)``, or
            fewer than 2 pairs selected.
    """
    arr = np.asarray(subset)
    if arr.dtype == np.bool_:
        if arr.shape != (n,):
            raise InputError(f"subset mask has shape {arr.shape}, expected ({n},) (one per pair)")
        idx = np.flatnonzero(arr)
    else:
        idx = arr.astype(np.int64).ravel()
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise InputError(f"subset holds pair indices outside [0, {n})")
    if idx.size < 2:
        raise InputError(f"subset selects {idx.size} pairs; need at least 2")
    return idx


def analyze_shared_dictionary(
    image_acts: Any,
    text_acts: Any,
    image_labels: Any,
    text_labels: Any,
    *,
    concepts: Any = None,
    subset: Any = None,
    thresholds: Any = DEFAULT_THRESHOLDS,
    alpha: float = 0.05,
    dominance: float = 0.9,
    n_boot: int = 200,
    n_null: int = 200,
    level: float = 0.95,
    seed: int = 0,
) -> SharedDictionaryResult:
    """Returns the per-feature modality split, Bridge Score, image/caption AUROCs and the
    invariant curve, as a :class:`SharedDictionaryResult`.

    ``image_acts[n, F]`` / ``text_acts[n, F]``: nonnegative activations of the
    same ``F`` features on matched pairs; ``image_labels[n, C]`` (what the image
    shows) / ``text_labels[n, C]`` (what the caption names). ``subset``: a bool
    mask ``[n]`` or pair indices to restrict every statistic to (e.g. the
    single-object pairs); ``result.n_pairs`` counts the pairs used. ``alpha``: FDR of
    every BH family; ``dominance``: the split beyond which a significant feature
    is single-modality; ``n_boot``: bootstrap resamples (split and Bridge Score);
    ``n_null``: null draws of the Bridge Score's re-pairing null and of the
    invariant curve's feature-permutation null (the split's swap null is analytic).

    Raises:
        ShapeError: the two activation arrays differ in width (feature count) or
            rows, or labels do not match the rows / each other's concept count.
        InputError: negative activations; bad ``alpha``/``dominance``.
    """
    img, txt = _check_acts(image_acts, text_acts)
    y_img, y_txt = check_pair_labels(image_labels, text_labels, img.shape[0])
    if subset is not None:
        keep = select_pairs(subset, img.shape[0])
        img, txt, y_img, y_txt = img[keep], txt[keep], y_img[keep], y_txt[keep]
    if not 0.0 < alpha < 1.0 or not 0.5 < dominance <= 1.0:
        raise InputError(f"need 0 < alpha < 1 and 0.5 < dominance <= 1, got {alpha}, {dominance}")
    names = concept_names(concepts, y_img.shape[1])
    split = modality_split(
        img,
        txt,
        dominance=dominance,
        alpha=alpha,
        n_boot=n_boot,
        level=level,
        seed=seed,
    )
    bridge = bridge_scores(img, txt, n_boot=n_boot, n_null=n_null, level=level, seed=seed + 1)
    a_i, se_i, p_i = _concept_tables(img, y_img)
    a_t, se_t, p_t = _concept_tables(txt, y_txt)
    curve = invariant_curve(
        a_i,
        p_i,
        a_t,
        p_t,
        thresholds=thresholds,
        alpha=alpha,
        n_perm=n_null,
        level=level,
        seed=seed + 2,
    )
    return SharedDictionaryResult(
        names, img.shape[0], img.shape[1], split, bridge, a_i, se_i, p_i, a_t, se_t, p_t, curve
    )


def shared_dictionary_from_rows(
    image_rows: Any,
    text_rows: Any,
    image_labels: Any,
    text_labels: Any,
    encode: Callable[[Array], Any],
    *,
    remove_gap: bool = False,
    image_name: str = "image rows",
    text_name: str = "text rows",
    **options: Any,
) -> SharedDictionaryResult:
    """Encodes matched rows with ``encode`` (optionally gap-removed first) and analyses the codes.

    ``encode(rows[n, d]) -> acts[n, F]`` is applied to each modality separately
    (e.g. a trained SAE's encoder returning dense nonnegative codes). With
    ``remove_gap=True`` each modality's mean row is subtracted first and recorded
    in ``result.gap_means``. ``image_name`` / ``text_name`` (hook names) appear in
    errors. ``options`` go to :func:`analyze_shared_dictionary`.

    Returns:
        The analysis of the codes, as :func:`analyze_shared_dictionary`.

    Raises:
        ShapeError: the rows' widths differ (both hooks and widths named) or their
            counts differ; the encoder's outputs disagree in shape.
    """
    img, txt = check_pair_rows(image_rows, text_rows, image_name=image_name, text_name=text_name)
    means = None
    if remove_gap:
        img, txt, means = remove_modality_gap(img, txt)
    res = analyze_shared_dictionary(encode(img), encode(txt), image_labels, text_labels, **options)
    res.gap_removed, res.gap_means = remove_gap, means
    return res
