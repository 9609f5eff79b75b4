"""Input checks shared by the cross-modal analyses: paired rows and their labels.

Every cross-modal analysis takes *matched pairs*: row ``i`` of the image array
and row ``i`` of the text array come from the same image-caption pair. These
checks turn arrays (numpy, torch, lists) into float64 / bool numpy arrays and
raise :class:`~vlmfast.errors.ShapeError` naming the two inputs and their
shapes when they do not line up.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from vlmfast.errors import InputError, ShapeError
from vlmfast.stats.inputs import as_numpy, check_labels


def check_matrix(x: Any, name: str) -> npt.NDArray[np.float64]:
    """``x`` as a finite float64 ``[rows, width]`` array.

    Raises:
        ShapeError: ``x`` is not two-dimensional.
        InputError: ``x`` is not numeric or holds NaN/inf.
    """
    arr = as_numpy(x, name)
    if arr.ndim != 2:
        raise ShapeError(f"{name} must be [rows, width], got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise InputError(f"{name} must be numeric, got dtype {arr.dtype}")
    out = np.ascontiguousarray(arr, dtype=np.float64)
    if out.size and not np.isfinite(out).all():
        raise InputError(f"{name} holds NaN or infinite values")
    return out


def check_pair_rows(
    image_rows: Any,
    text_rows: Any,
    *,
    image_name: str = "image rows",
    text_name: str = "text rows",
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Both modalities' rows of matched pairs as float64 arrays of equal shape.

    ``image_name`` / ``text_name`` (e.g. hook names ``image.embed``, ``text.embed``)
    appear in the error messages.

    Raises:
        ShapeError: the widths differ (both widths named: the two hooks cannot share
            one dictionary), or the row counts differ (row i of each must be one pair).
    """
    img = check_matrix(image_rows, image_name)
    txt = check_matrix(text_rows, text_name)
    if img.shape[1] != txt.shape[1]:
        raise ShapeError(
            f"{image_name} have width {img.shape[1]} but {text_name} have width "
            f"{txt.shape[1]}: a shared space needs two hooks of equal width"
        )
    if img.shape[0] != txt.shape[0]:
        raise ShapeError(
            f"{image_name} have {img.shape[0]} rows but {text_name} have {txt.shape[0]}: "
            "row i of each must be the same image-caption pair"
        )
    if img.shape[0] < 2:
        raise InputError(f"need at least 2 pairs, got {img.shape[0]}")
    return img, txt


def check_pair_labels(
    image_labels: Any, text_labels: Any, n_rows: int
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """Image and caption labels as bool ``[n_rows, concepts]`` with the same concept columns.

    Raises:
        ShapeError: a label array has the wrong number of rows, or the two arrays
            have different numbers of concepts.
    """
    img = check_labels(image_labels, n_rows)
    txt = check_labels(text_labels, n_rows)
    if img.shape[1] != txt.shape[1]:
        raise ShapeError(
            f"image labels have {img.shape[1]} concepts but caption labels have "
            f"{txt.shape[1]}: the columns must name the same concepts"
        )
    return img, txt


def concept_names(names: Any, n_concepts: int) -> list[str]:
    """``names`` as a list of ``n_concepts`` strings (``c0, c1, ...`` when ``None``).

    Raises:
        InputError: the number of names differs from the number of label columns.
    """
    if names is None:
        return [f"c{j}" for j in range(n_concepts)]
    out = [str(n) for n in names]
    if len(out) != n_concepts:
        raise InputError(f"{len(out)} concept names for {n_concepts} label columns")
    return out


def to_jsonable(v: Any) -> Any:
    """``v`` with numpy arrays/scalars as lists/floats and NaN/inf as ``None`` (JSON-ready)."""
    if isinstance(v, dict):
        return {k: to_jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [to_jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return to_jsonable(v.tolist())
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v
