"""Shuffled batch streaming through the Python API."""

from __future__ import annotations

from pathlib import Path

import numpy as np
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


# ---------------------------------------------------------------- reference paths
#
# A plain-Python reimplementation of the documented stream order (SplitMix64
# chunk permutation per (seed, epoch), windows of whole chunks, a row
# permutation per window) and plain numpy row slicing, compared with the Rust
# fast paths (chunks decoded from the mapped file straight into the output, rows
# gathered from mapped chunks into the batch) on ragged shapes: a partial last
# chunk, a batch size that does not divide the rows, a window that does not
# divide the chunks, compressed and sharded chunks.

_M64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


class _SplitMix64:
    def __init__(self, parts: list[int]) -> None:
        self.s = _GOLDEN
        for p in parts:
            self.s ^= p
            self.s = self.next()

    def next(self) -> int:
        self.s = (self.s + _GOLDEN) & _M64
        z = self.s
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
        return z ^ (z >> 31)

    def permutation(self, n: int) -> list[int]:
        p = list(range(n))
        for i in range(n - 1, 0, -1):
            j = (self.next() * (i + 1)) >> 64
            p[i], p[j] = p[j], p[i]
        return p


def _reference_batches(
    rows: int,
    chunk_rows: int,
    batch: int,
    buffer_rows: int,
    *,
    shuffle: bool,
    seed: int,
    epoch: int,
    start_batch: int,
    drop_last: bool,
) -> list[list[int]]:
    n_chunks = -(-rows // chunk_rows)
    window_chunks = max(1, -(-max(buffer_rows, batch) // chunk_rows))
    order = (
        _SplitMix64([seed, epoch, 1]).permutation(n_chunks) if shuffle else list(range(n_chunks))
    )
    stream: list[int] = []
    for w, first in enumerate(range(0, n_chunks, window_chunks)):
        ids = [
            r
            for c in order[first : first + window_chunks]
            for r in range(c * chunk_rows, min((c + 1) * chunk_rows, rows))
        ]
        if shuffle:
            perm = _SplitMix64([seed, epoch, 2, w]).permutation(len(ids))
            ids = [ids[k] for k in perm]
        stream += ids
    n_batches = rows // batch if drop_last else -(-rows // batch)
    return [stream[b * batch : (b + 1) * batch] for b in range(start_batch, n_batches)]


@pytest.mark.parametrize(
    "layout",
    [
        {"compression": "none"},
        {"compression": "zstd"},
        {"compression": "zstd", "shard_inner_rows": 4},
    ],
)
def test_fast_paths_match_reference(tmp_path: Path, layout: dict) -> None:
    rows, chunk = 203, 8  # the last chunk holds 3 rows
    s = ActivationStore.create(
        tmp_path / "s.zarr", {"image.embed": 5}, dtype="float32", chunk_rows=chunk, **layout
    )
    x = torch.arange(rows, dtype=torch.float32)[:, None] + torch.zeros(1, 5)
    x[:, 1:] = torch.randn(rows, 4)
    s.append("image.embed", x[:100])
    s.append("image.embed", x[100:])
    ref = x.numpy()
    # reads: whole chunks, pieces of chunks, the partial last chunk, empty ranges
    for a, b in [
        (0, rows),
        (0, 8),
        (8, 64),
        (3, 5),
        (5, 77),
        (192, 200),
        (195, 203),
        (200, 203),
        (7, 7),
    ]:
        np.testing.assert_array_equal(s.read("image.embed", a, b).numpy(), ref[a:b])
    cases = [
        dict(
            batch=32, buffer_rows=24, shuffle=True, seed=3, epoch=0, start_batch=0, drop_last=False
        ),
        dict(
            batch=30, buffer_rows=1, shuffle=True, seed=0, epoch=5, start_batch=2, drop_last=False
        ),
        dict(
            batch=7, buffer_rows=100, shuffle=True, seed=9, epoch=1, start_batch=0, drop_last=True
        ),
        dict(
            batch=64, buffer_rows=8, shuffle=False, seed=0, epoch=0, start_batch=1, drop_last=False
        ),
        dict(
            batch=500, buffer_rows=16, shuffle=True, seed=1, epoch=0, start_batch=0, drop_last=False
        ),
    ]
    for case in cases:
        want = _reference_batches(rows, chunk, **case)  # type: ignore[arg-type]
        got = list(
            s.batches(
                "image.embed",
                case["batch"],  # type: ignore[arg-type]
                shuffle=bool(case["shuffle"]),
                seed=int(case["seed"]),
                epoch=int(case["epoch"]),
                start_batch=int(case["start_batch"]),
                drop_last=bool(case["drop_last"]),
                buffer_rows=int(case["buffer_rows"]),
            )
        )
        assert [b[:, 0].long().tolist() for b in got] == want, case
        for b, ids in zip(got, want):  # whole rows, not just the id column
            np.testing.assert_array_equal(b.numpy(), ref[ids])


def test_kept_batches_are_not_overwritten(store: ActivationStore) -> None:
    kept = []
    for i, b in enumerate(store.batches("image.embed", 16, seed=2, buffer_rows=8)):
        if i % 2 == 0:
            kept.append((b, b.clone()))
    assert len(kept) > 3
    for b, snapshot in kept:
        assert torch.equal(b, snapshot)
