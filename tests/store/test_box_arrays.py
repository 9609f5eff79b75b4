"""Object boxes in the store: stores without them open, uncommitted boxes are not visible."""

from __future__ import annotations

import numpy as np
import pytest

from vlmfast.caching.boxes import box_attrs
from vlmfast.caching.geometry import InputGeometry
from vlmfast.errors import InputError
from vlmfast.store import ActivationStore
from vlmfast.store.records import BoxRows

HOOK = "image.blocks.0.resid_post"


def _one(box, concepts=(True,)):
    return BoxRows(np.array([7], np.int64), np.array([box], np.float32), np.array([concepts], bool))


def test_store_without_boxes_opens(tmp_path):
    store = ActivationStore.create(tmp_path / "old.zarr", {HOOK: 3}, concepts=(["red"], ["color"]))
    store.append_many(
        {HOOK: np.zeros((2, 3), np.float32)},
        {"sample": np.array([0, 0]), "position": np.array([0, 1])},
        labels=np.ones((1, 1), bool),
        label_samples=[0],
        caption_labels=np.ones((1, 1), bool),
    )
    store.close()
    again = ActivationStore.open(tmp_path / "old.zarr")
    assert again.boxes is None and "boxes" not in again.attrs
    with pytest.raises(InputError, match="boxes given but the store was created without"):
        ActivationStore.open(tmp_path / "old.zarr", mode="a").append_many(
            {HOOK: np.zeros((1, 3), np.float32)}, boxes=_one([0, 0, 0.5, 0.5])
        )


def _boxed_store(path):
    return ActivationStore.create(
        path,
        {HOOK: 3},
        concepts=(["red", "circle"], ["color", "object"]),
        boxes=box_attrs(InputGeometry("squash", 64, 64), ["color", "object"]),
        chunk_rows=4,
    )


def _batch(store, s, commit=True):
    store.append_many(
        {HOOK: np.zeros((2, 3), np.float32)},
        {"sample": np.array([s, s]), "position": np.array([0, 1])},
        labels=np.ones((1, 2), bool),
        label_samples=[s],
        caption_labels=np.ones((1, 2), bool),
        boxes=BoxRows(
            np.array([s] * 3), np.full((3, 4), 0.1 * (s + 1), np.float32), np.ones((3, 2), bool)
        ),
        commit=commit,
    )


def test_uncommitted_boxes_are_not_visible(tmp_path):
    path = tmp_path / "b.zarr"
    store = _boxed_store(path)
    _batch(store, 0)
    _batch(store, 1)
    _batch(store, 2, commit=False)  # never committed: a crash here loses it

    def crash(stage):
        if stage == "flushed":
            raise RuntimeError("killed")

    _batch(store, 3, commit=False)
    store._crash_hook = crash
    with pytest.raises(RuntimeError):
        store.commit()  # chunks and shapes on disk, commit point not reached
    store.close()
    seen = ActivationStore.open(path)
    assert seen.attrs["committed_box_rows"] == 6
    assert seen.boxes.sample.tolist() == [0, 0, 0, 1, 1, 1]
    assert np.allclose(seen.boxes.boxes[3:], 0.2)
    more = ActivationStore.open(path, mode="a")  # truncates back, then goes on
    _batch(more, 5)
    more.close()
    assert ActivationStore.open(path).boxes.sample.tolist() == [0, 0, 0, 1, 1, 1, 5, 5, 5]
