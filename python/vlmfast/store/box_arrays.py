"""Object boxes stored with the labels: creating, checking and reading their arrays.

Schema (written only when the source knows where its objects are: synthetic scenes,
COCO instances): ``labels/box_sample`` int64 ``[n_boxes]`` (sample id of each box,
repeated per box, in sample order), ``labels/boxes`` float32 ``[n_boxes, 4]``
(``x0, y0, x1, y1`` normalised to ``[0, 1]`` in the *model-input* frame, i.e. after the
pair's preprocessing), ``labels/box_concepts`` bool ``[n_boxes, C]`` (the object's
concepts, columns of ``labels/concepts``). The root attrs hold ``boxes`` (the
geometry that mapped them, the patch grid of the image tower, the concept kinds boxes
carry) and ``committed_box_rows``, committed with the other arrays. How boxes are
mapped from a source is ``vlmfast.caching.boxes``; the patch labels they give are
``vlmfast.store.patch_grid``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vlmfast.errors import InputError, ShapeError
from vlmfast.store.arrays import create_array
from vlmfast.store.records import BoxRows
from vlmfast.store.schema import (
    BOX_CONCEPT_DIMS,
    BOX_CONCEPTS_ARRAY,
    BOX_DIMS,
    BOX_SAMPLE_ARRAY,
    BOXES_ARRAY,
)


def create_box_arrays(root: str, chunk_rows: int, compression: str, n_concepts: int) -> None:
    """The empty box arrays of a new store."""
    create_array(root, BOX_SAMPLE_ARRAY, "int64", None, chunk_rows, compression, dims=BOX_DIMS[:1])
    create_array(root, BOXES_ARRAY, "float32", 4, chunk_rows, compression, dims=BOX_DIMS)
    create_array(
        root,
        BOX_CONCEPTS_ARRAY,
        "bool",
        max(n_concepts, 1),
        chunk_rows,
        compression,
        dims=BOX_CONCEPT_DIMS,
    )


def box_array_specs(n_concepts: int) -> dict[str, tuple[np.dtype[Any], int | None]]:
    """Carrier dtype and width of each box array (for reading and merging)."""
    return {
        BOX_SAMPLE_ARRAY: (np.dtype(np.int64), None),
        BOXES_ARRAY: (np.dtype(np.float32), 4),
        BOX_CONCEPTS_ARRAY: (np.dtype(np.bool_), max(n_concepts, 1)),
    }


def check_box_rows(boxes: BoxRows, n_concepts: int) -> list[np.ndarray]:
    """The three arrays of ``boxes`` to append (validated, contiguous, padded columns)."""
    c = max(n_concepts, 1)
    sample = np.asarray(boxes.sample)
    n = len(sample)
    if sample.ndim != 1 or not np.issubdtype(sample.dtype, np.integer):
        raise ShapeError(f"boxes.sample has shape {sample.shape} {sample.dtype}; expected [n] ints")
    xy = np.asarray(boxes.boxes, dtype=np.float32)
    if xy.shape != (n, 4):
        raise ShapeError(f"boxes.boxes has shape {xy.shape}; expected ({n}, 4)")
    if n and (not np.isfinite(xy).all() or xy.min() < 0 or xy.max() > 1):
        raise InputError("boxes.boxes must be finite and normalised to [0, 1]")
    con = np.asarray(boxes.concepts, dtype=bool)
    if con.shape != (n, n_concepts) and con.shape != (n, c):
        raise ShapeError(f"boxes.concepts has shape {con.shape}; expected ({n}, {n_concepts})")
    if con.shape[1] != c:
        con = np.concatenate([con, np.zeros((n, c - con.shape[1]), bool)], axis=1)
    return [
        np.ascontiguousarray(sample.astype(np.int64)),
        np.ascontiguousarray(xy),
        np.ascontiguousarray(con),
    ]
