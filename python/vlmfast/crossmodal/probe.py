"""Concept level: does a linear read-out of a concept transfer across modalities?

For every concept, a ridge probe (closed form, ``W = (XᵀX + λ·I)⁻¹ XᵀY`` on
training rows centred by their own mean, targets ±1) is fitted on one
modality's rows of the *training pairs* and scored on the other modality's
rows of the *held-out pairs* (both directions: image → text and text → image).
Held-out pairs keep a caption from being tested on its own image.

Reported per concept and direction:

* ``auroc``: exact AUROC of the probe's scores on the other modality
  (:func:`vlmfast.stats.score_dense`), with a DeLong Wald interval;
* a **label-shuffled null**: the training labels are permuted over rows
  ``n_null`` times (all concepts' columns together, so the label structure is
  kept), the probe is refitted and tested the same way; ``null_mean``,
  ``null_q95`` and the p-value ``(1 + #{null ≥ observed}) / (1 + n_null)``;
* ``within_auroc``: the same probe on the held-out pairs of its own training
  modality, for reference (how well the concept is read at all).

A concept with no positive or no negative among the training or test rows has
NaN AUROCs and p-value (undefined, not 0.5).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from vlmfast.crossmodal.checks import (
    check_pair_labels,
    check_pair_rows,
    concept_names,
    to_jsonable,
)
from vlmfast.errors import InputError
from vlmfast.stats import auroc, score_dense
from vlmfast.stats.significance import z_for_level


@dataclass
class ProbeDirection:
    """Per-concept results of probes trained on ``train`` rows and tested on ``test`` rows."""

    train: str
    """Modality the probes were fitted on (``"image"`` or ``"text"``)."""
    test: str
    """Modality the transfer AUROC is measured on."""
    auroc: npt.NDArray[np.float64]
    """``[C]`` exact transfer AUROC on the held-out pairs of ``test``; NaN if undefined."""
    ci_low: npt.NDArray[np.float64]
    """``[C]`` lower end of the DeLong Wald interval of ``auroc``."""
    ci_high: npt.NDArray[np.float64]
    """``[C]`` upper end of that interval."""
    null_mean: npt.NDArray[np.float64]
    """``[C]`` mean transfer AUROC of probes fitted on shuffled labels."""
    null_q95: npt.NDArray[np.float64]
    """``[C]`` 95th percentile of the shuffled-label AUROCs."""
    pvalue: npt.NDArray[np.float64]
    """``[C]`` one-sided permutation p-value of ``auroc`` against the null."""
    within_auroc: npt.NDArray[np.float64]
    """``[C]`` AUROC of the same probe on held-out pairs of ``train`` (reference)."""

    def to_dict(self) -> dict[str, Any]:
        """Returns a JSON-ready dict (NaN becomes ``None``)."""
        return {k: to_jsonable(v) for k, v in self.__dict__.items()}


@dataclass
class ConceptTransfer:
    """Cross-modal probe transfer for every concept, in both directions."""

    concepts: list[str]
    image_to_text: ProbeDirection
    text_to_image: ProbeDirection
    n_train_pairs: int
    n_test_pairs: int
    ridge: float
    n_null: int
    level: float
    """Confidence level of the intervals."""

    def to_dict(self) -> dict[str, Any]:
        """Returns a JSON-ready dict of both directions and the settings."""
        out: dict[str, Any] = {
            k: to_jsonable(v) for k, v in self.__dict__.items() if not isinstance(v, ProbeDirection)
        }
        out["image_to_text"] = self.image_to_text.to_dict()
        out["text_to_image"] = self.text_to_image.to_dict()
        return out


def fit_ridge(
    x: npt.NDArray[np.float64], y: npt.NDArray[np.bool_], ridge: float
) -> npt.NDArray[np.float64]:
    """Returns ridge weights ``[d, C]`` of ±1 targets on rows centred by their mean (scores = ``x @ W``)."""
    xc = x - x.mean(0)
    gram = xc.T @ xc + ridge * np.eye(x.shape[1])
    target = np.where(y, 1.0, -1.0)
    return np.linalg.solve(gram, xc.T @ (target - target.mean(0)))


def _diag_auroc(scores: npt.NDArray[np.float64], labels: npt.NDArray[np.bool_]) -> Any:
    """AUROC of column j of ``scores`` for label column j, with DeLong SEs ``(auc, se)``."""
    res = score_dense(scores, labels, with_se=True, stats=False, top_n=0)
    idx = np.arange(labels.shape[1])
    se = res.se if res.se is not None else np.full_like(res.auroc, np.nan)
    return res.auroc[idx, idx], se[idx, idx]


def _undefined(y_train: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    pos = y_train.sum(0)
    return (pos == 0) | (pos == y_train.shape[0])


def _direction(
    x_tr: npt.NDArray[np.float64],
    y_tr: npt.NDArray[np.bool_],
    tests: tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]],
    within: tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]],
    names: tuple[str, str],
    settings: tuple[float, int, float, np.random.Generator],
) -> ProbeDirection:
    """One direction: fit on ``(x_tr, y_tr)``, test on ``tests``, null by shuffled labels."""
    ridge, n_null, level, rng = settings
    x_te, y_te = tests
    w = fit_ridge(x_tr, y_tr, ridge)
    auc, se = _diag_auroc(x_te @ w, y_te)
    within_auc, _ = _diag_auroc(within[0] @ w, within[1])
    null = np.empty((n_null, y_tr.shape[1]))
    for k in range(n_null):
        w_null = fit_ridge(x_tr, y_tr[rng.permutation(len(y_tr))], ridge)
        null[k] = np.diag(auroc(x_te @ w_null, y_te))
    bad = _undefined(y_tr) | np.isnan(auc)
    z = z_for_level(level)
    pv = (1.0 + (null >= auc[None, :] - 1e-12).sum(0)) / (1.0 + n_null)

    def mask(a: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return np.where(bad, np.nan, a)

    return ProbeDirection(
        train=names[0],
        test=names[1],
        auroc=mask(auc),
        ci_low=mask(np.clip(auc - z * se, 0.0, 1.0)),
        ci_high=mask(np.clip(auc + z * se, 0.0, 1.0)),
        null_mean=mask(null.mean(0)),
        null_q95=mask(np.quantile(null, 0.95, axis=0)),
        pvalue=mask(pv),
        within_auroc=np.where(_undefined(y_tr), np.nan, within_auc),
    )


def concept_transfer(
    image_rows: Any,
    text_rows: Any,
    image_labels: Any,
    text_labels: Any,
    *,
    concepts: Any = None,
    test_fraction: float = 0.3,
    ridge: float = 1.0,
    n_null: int = 100,
    level: float = 0.95,
    seed: int = 0,
) -> ConceptTransfer:
    """Returns the cross-modal transfer AUROC (in [0, 1]) of a linear probe per concept, both
    directions (see module), with the label-shuffle null.

    ``image_rows[n, d]`` / ``text_rows[n, d]`` are matched pairs (row i of each is
    one pair) with ``image_labels[n, C]`` (what the image shows) and
    ``text_labels[n, C]`` (what the caption names). ``test_fraction`` of the pairs
    (seeded) are held out; ``ridge`` is λ (in the rows' squared units); ``n_null``
    label shuffles form the null.

    Raises:
        ShapeError: widths or row counts differ, or labels do not match the rows.
        InputError: ``test_fraction`` outside (0, 1), ``ridge < 0`` or ``n_null < 1``.
    """
    img, txt = check_pair_rows(image_rows, text_rows)
    y_img, y_txt = check_pair_labels(image_labels, text_labels, img.shape[0])
    names = concept_names(concepts, y_img.shape[1])
    if not 0.0 < test_fraction < 1.0:
        raise InputError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if ridge < 0 or n_null < 1:
        raise InputError(f"need ridge >= 0 and n_null >= 1, got ridge={ridge}, n_null={n_null}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(img.shape[0])
    n_test = max(1, round(test_fraction * img.shape[0]))
    te, tr = order[:n_test], order[n_test:]
    settings = (ridge, n_null, level, rng)
    i2t = _direction(
        img[tr], y_img[tr], (txt[te], y_txt[te]), (img[te], y_img[te]), ("image", "text"), settings
    )
    t2i = _direction(
        txt[tr], y_txt[tr], (img[te], y_img[te]), (txt[te], y_txt[te]), ("text", "image"), settings
    )
    return ConceptTransfer(names, i2t, t2i, len(tr), len(te), ridge, n_null, level)
