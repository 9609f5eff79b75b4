"""A planted shared space: paired image/text rows with known cross-modal structure.

Each of ``n`` pairs shows a random subset of ``C`` binary concepts (each concept
with its own frequency). A concept is written into a row as ``strength`` times a
unit direction. A chosen fraction of the concepts is *shared*: the image rows and
the text rows use the same direction. The others are *modality-specific*: the
image direction and the text direction are different (orthogonal) vectors. Each
modality also gets a constant offset (the modality gap; by default orthogonal to
every concept direction) and isotropic Gaussian noise::

    image_row_i = Σ_c y_ic · strength · u_c^img + offset_img + noise · ε
    text_row_i  = Σ_c t_ic · strength · u_c^txt + offset_txt + noise · ε'

``t`` (caption labels) equals ``y`` (what the image shows), except that with
``caption_drop > 0`` each present concept is left out of the caption with that
probability (captions name a subset of what the image shows).

The *ground-truth dictionary* (:meth:`PlantedCrossModal.truth_features`) has one
feature per distinct direction: one per shared concept (bimodal, invariant), one
per image direction and one per text direction of each specific concept
(image-only / text-only). Its invariant fraction is therefore
``n_shared / (n_shared + 2 · n_specific)`` (:attr:`PlantedCrossModal.invariant_fraction`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from vlmfast.errors import InputError


@dataclass
class PlantedCrossModal:
    """Rows, labels and the planted truth of :func:`planted_pairs`."""

    image_rows: npt.NDArray[np.float64]
    """``[n, d]`` image-side rows."""
    text_rows: npt.NDArray[np.float64]
    """``[n, d]`` text-side rows; row i is the caption of image i."""
    image_labels: npt.NDArray[np.bool_]
    """``[n, C]`` what each image shows."""
    text_labels: npt.NDArray[np.bool_]
    """``[n, C]`` what each caption names (a subset of the image labels)."""
    shared: npt.NDArray[np.bool_]
    """``[C]`` whether the concept uses one direction in both modalities."""
    image_directions: npt.NDArray[np.float64]
    """``[C, d]`` unit direction of each concept in image rows."""
    text_directions: npt.NDArray[np.float64]
    """``[C, d]`` unit direction of each concept in text rows."""
    image_offset: npt.NDArray[np.float64]
    """``[d]`` constant added to every image row."""
    text_offset: npt.NDArray[np.float64]
    """``[d]`` constant added to every text row."""
    frequencies: npt.NDArray[np.float64]
    """``[C]`` probability that an image shows the concept."""
    strength: float
    """Length of a present concept's contribution to a row."""

    @property
    def feature_directions(self) -> npt.NDArray[np.float64]:
        """``[F, d]`` the distinct planted directions: shared, image-specific, text-specific."""
        spec = ~self.shared
        return np.concatenate(
            [
                self.image_directions[self.shared],
                self.image_directions[spec],
                self.text_directions[spec],
            ]
        )

    @property
    def feature_kind(self) -> list[str]:
        """``[F]`` ``"bimodal"``, ``"image-only"`` or ``"text-only"`` per planted feature."""
        n_sh, n_sp = int(self.shared.sum()), int((~self.shared).sum())
        return ["bimodal"] * n_sh + ["image-only"] * n_sp + ["text-only"] * n_sp

    @property
    def feature_concept(self) -> npt.NDArray[np.int64]:
        """``[F]`` the concept column each planted feature encodes."""
        sh = np.flatnonzero(self.shared)
        sp = np.flatnonzero(~self.shared)
        return np.concatenate([sh, sp, sp]).astype(np.int64)

    @property
    def invariant_fraction(self) -> float:
        """Planted invariant features / features selective in either modality (truth dictionary)."""
        n_sh, n_sp = int(self.shared.sum()), int((~self.shared).sum())
        return n_sh / (n_sh + 2 * n_sp)

    def truth_features(self, rows: Any, threshold: float = 0.5) -> npt.NDArray[np.float64]:
        """Returns ground-truth feature activations ``[rows, F]``: ``ReLU(rows · u_f − threshold·strength)``.

        A stand-in for a trained SAE (nonnegative, sparse, one feature per planted
        direction); apply it to raw rows or to gap-removed rows.
        """
        x = np.asarray(rows, dtype=np.float64)
        return np.maximum(x @ self.feature_directions.T - threshold * self.strength, 0.0)


def _directions(
    rng: np.random.Generator, d: int, shared: npt.NDArray[np.bool_]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Orthonormal concept directions (image, text) and two spare unit vectors."""
    n_c = len(shared)
    n_spec = int((~shared).sum())
    need = n_c + n_spec + 2
    if need > d:
        raise InputError(
            f"width d={d} is too small for {n_c} concepts ({n_spec} modality-specific): "
            f"need d >= {need}"
        )
    q, _ = np.linalg.qr(rng.standard_normal((d, need)))
    basis = q.T  # [need, d] orthonormal
    img = basis[:n_c].copy()
    txt = img.copy()
    txt[~shared] = basis[n_c : n_c + n_spec]
    return img, txt, basis[n_c + n_spec :]


def planted_pairs(
    n: int = 2000,
    d: int = 32,
    n_concepts: int = 8,
    *,
    shared_fraction: float = 0.5,
    strength: float = 2.0,
    gap: float = 3.0,
    noise: float = 0.3,
    frequency_range: tuple[float, float] = (0.1, 0.4),
    caption_drop: float = 0.0,
    seed: int = 0,
) -> PlantedCrossModal:
    """Returns ``n`` planted image/text pairs of width ``d`` (see the module docstring).

    ``shared_fraction`` of the ``n_concepts`` concepts (rounded) share a direction;
    frequencies are spread evenly over ``frequency_range`` in a seeded order;
    ``gap`` is the length of each modality's offset (two orthogonal directions,
    orthogonal to the concepts); ``noise`` the per-coordinate standard deviation.
    Deterministic for a given ``seed``.

    Raises:
        InputError: a fraction or probability outside [0, 1], ``n < 2``, or a width
            too small for orthogonal directions (``d < n_concepts + n_specific + 2``).
    """
    for name, val in (("shared_fraction", shared_fraction), ("caption_drop", caption_drop)):
        if not 0.0 <= val <= 1.0:
            raise InputError(f"{name} must be in [0, 1], got {val}")
    lo, hi = frequency_range
    if not 0.0 < lo <= hi < 1.0:
        raise InputError(f"frequency_range must satisfy 0 < low <= high < 1, got {frequency_range}")
    if n < 2 or n_concepts < 1:
        raise InputError(f"need n >= 2 and n_concepts >= 1, got n={n}, n_concepts={n_concepts}")
    rng = np.random.default_rng(seed)
    shared = np.zeros(n_concepts, dtype=bool)
    shared[rng.permutation(n_concepts)[: round(shared_fraction * n_concepts)]] = True
    img_dir, txt_dir, spare = _directions(rng, d, shared)
    freq = rng.permutation(np.linspace(lo, hi, n_concepts))
    y = rng.random((n, n_concepts)) < freq
    t = y & (rng.random((n, n_concepts)) >= caption_drop)
    off_img, off_txt = gap * spare[0], gap * spare[1]
    img = strength * y @ img_dir + off_img + noise * rng.standard_normal((n, d))
    txt = strength * t @ txt_dir + off_txt + noise * rng.standard_normal((n, d))
    return PlantedCrossModal(
        image_rows=img,
        text_rows=txt,
        image_labels=y,
        text_labels=t,
        shared=shared,
        image_directions=img_dir,
        text_directions=txt_dir,
        image_offset=off_img,
        text_offset=off_txt,
        frequencies=freq,
        strength=float(strength),
    )
