"""Shuffled batch streaming through the Python API."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vlmfast.errors import InputError
from vlmfast.store import ActivationStore


@pytest.fixture
def store(tmp_path: Path) -> ActivationStore:
    s = ActivationStore.create(
        tmp_path / "s.zarr", {"image.embed": 2}, dtype="bfloat16", chunk_rows=8
    )
    rows = torch.arange(203, dtype=torch.float32).repeat_interleave(2).reshape(203, 2)
    s.append("image.embed", rows.bfloat16())
    return s


def _ids(batches: list[torch.Tensor]) -> list[int]:
    return [int(v) for b in batches for v in b[:, 0].float().tolist()]


def test_every_row_once_and_deterministic(store: ActivationStore) -> None:
    e0 = list(store.batches("image.embed", 32, seed=3, buffer_rows=24))
    assert all(b.dtype == torch.bfloat16 and b.shape[1] == 2 for b in e0)
    assert [len(b) for b in e0] == [32] * 6 + [11]
    ids = _ids(e0)
    assert sorted(ids) == list(range(203)) and ids != list(range(203))
    assert _ids(list(store.batches("image.embed", 32, seed=3, buffer_rows=24))) == ids
    assert _ids(list(store.batches("image.embed", 32, seed=3, buffer_rows=24, epoch=1))) != ids
    assert _ids(list(store.batches("image.embed", 32, seed=4, buffer_rows=24))) != ids


def test_resume_from_epoch_and_batch(store: ActivationStore) -> None:
    full = list(store.batches("image.embed", 30, seed=1, epoch=2))
    resumed = list(store.batches("image.embed", 30, seed=1, epoch=2, start_batch=4))
    assert _ids(resumed) == _ids(full[4:])


def test_ordered_drop_last_dtype(store: ActivationStore) -> None:
    out = list(store.batches("image.embed", 50, shuffle=False, drop_last=True, dtype=torch.float32))
    assert [len(b) for b in out] == [50] * 4
    assert out[0].dtype == torch.float32
    assert _ids(out) == list(range(200))
    with pytest.raises(InputError, match="batch_size"):
        store.batches("image.embed", 0)


def test_stream_abandoned_midway_is_fine(store: ActivationStore) -> None:
    it = store.batches("image.embed", 4, buffer_rows=8, prefetch=1)
    first = next(it)
    assert first.shape == (4, 2)
    del it  # the background thread stops when the consumer goes away
    import gc

    gc.collect()
    # the store stays fully usable: a new epoch still yields every row exactly once
    rows = torch.cat(list(store.batches("image.embed", 16, buffer_rows=8, prefetch=1)))
    assert rows.shape[0] == store.n_rows("image.embed")
    firsts = sorted(rows[:, 0].float().tolist())
    assert firsts == sorted(
        store.read("image.embed", 0, store.n_rows("image.embed"))[:, 0].float().tolist()
    )
