"""ActivationStore: round trips, index, labels, bad input, crash-safe commits, zarr interop."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from vlmfast.errors import HookNameError, InputError, ShapeError, StoreError, StoreFormatError
from vlmfast.store import ActivationStore


def _make(path: Path, dtype: str = "float32", **kw: object) -> ActivationStore:
    return ActivationStore.create(
        path,
        {"image.blocks.0.resid_post": 6, "text.embed": 4, "joint.embed": 4},
        dtype=dtype,
        chunk_rows=5,
        **kw,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize(
    "layout",
    [
        {"compression": "none"},
        {"compression": "zstd"},
        {"compression": "zstd", "shard_inner_rows": 1},
    ],
)
def test_round_trip_ragged_appends(tmp_path: Path, dtype: str, layout: dict) -> None:
    tdtype = getattr(torch, dtype)
    store = _make(tmp_path / "s.zarr", dtype, **layout)
    x = torch.randn(23, 6).to(tdtype)
    for a, b in [(0, 3), (3, 4), (4, 16), (16, 23)]:  # across chunk edges
        store.append("image.blocks.0.resid_post", x[a:b])
    got = store.read("image.blocks.0.resid_post")
    assert got.dtype == tdtype and torch.equal(got, x)
    assert torch.equal(store.read("image.blocks.0.resid_post", 4, 11), x[4:11])
    assert store.n_rows("image.blocks.0.resid_post") == 23
    assert store.n_rows("text.embed") == 0
    store.close()
    again = ActivationStore.open(tmp_path / "s.zarr")
    assert torch.equal(again.read("image.blocks.0.resid_post"), x)


def test_numpy_input_and_index(tmp_path: Path) -> None:
    store = _make(tmp_path / "s.zarr")
    rows = np.arange(12, dtype=np.float32).reshape(3, 4)
    store.append("text.embed", rows, index={"sample": [7, 8, 9], "position": [3, 3, 3]})
    store.append("text.embed", rows)
    idx = store.index("text.embed")
    assert idx.sample.tolist() == [7, 8, 9, 3, 4, 5]
    assert idx.position.tolist() == [3, 3, 3, -1, -1, -1]
    assert idx.modality.tolist() == [1] * 6
    store.append_many(
        {"joint.embed": np.concatenate([rows, rows])},
        index={"sample": [0, 1, 2, 0, 1, 2], "modality": [0, 0, 0, 1, 1, 1]},
    )
    assert store.index("joint.embed").modality.tolist() == [0, 0, 0, 1, 1, 1]
    with pytest.raises(InputError, match="joint"):
        store.append("joint.embed", rows)


def test_labels(tmp_path: Path) -> None:
    store = _make(tmp_path / "s.zarr", concepts=(["red", "cube"], ["color", "object"]))
    lab = np.array([[True, False], [False, True]])
    store.append_many(
        {"text.embed": np.zeros((2, 4), np.float32)}, labels=lab, label_samples=[10, 11]
    )
    got = ActivationStore.open(tmp_path / "s.zarr").labels
    assert got is not None
    assert got.names == ["red", "cube"] and got.kinds == ["color", "object"]
    assert (got.matrix == lab).all() and got.sample.tolist() == [10, 11]
    assert _make(tmp_path / "t.zarr").labels is None


def test_bad_input_is_named_and_touches_nothing(tmp_path: Path) -> None:
    store = _make(tmp_path / "s.zarr")
    good = torch.ones(3, 4)
    store.append("text.embed", good)
    with pytest.raises(InputError, match="float64"):
        store.append("text.embed", torch.ones(2, 4, dtype=torch.float64))
    with pytest.raises(ShapeError, match=r"text.embed.*\(2, 5\)"):
        store.append("text.embed", torch.ones(2, 5))
    with pytest.raises(HookNameError, match="nope"):
        store.append("nope", good)
    bad = torch.ones(4, 4)
    bad[1, 2] = float("nan")
    bad[3, 0] = float("inf")
    with pytest.raises(InputError, match="rows 1, 3"):
        store.append_many({"text.embed": bad, "image.blocks.0.resid_post": torch.ones(1, 6)})
    assert store.n_rows("text.embed") == 3
    assert store.n_rows("image.blocks.0.resid_post") == 0, "a failed append_many writes nothing"
    with pytest.raises(ShapeError, match="sample"):
        store.append("text.embed", good, index={"sample": [1, 2]})
    n = store.append("text.embed", bad, skip_nonfinite=True)
    assert n == 2 and store.n_rows("text.embed") == 5
    assert store.attrs["skipped_nonfinite"]["text.embed"] == 2
    assert store.index("text.embed").sample.tolist() == [0, 1, 2, 3, 5]
    with pytest.raises(InputError, match="out of range"):
        store.read("text.embed", 0, 99)


def test_not_a_store_newer_version_and_existing(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        ActivationStore.open(tmp_path / "missing")
    (tmp_path / "plain").mkdir()
    with pytest.raises(StoreFormatError, match="not a vlmfast store"):
        ActivationStore.open(tmp_path / "plain")
    import zarr

    zarr.open_group(tmp_path / "other.zarr", mode="w")
    with pytest.raises(StoreFormatError, match="not a vlmfast"):
        ActivationStore.open(tmp_path / "other.zarr")
    s = _make(tmp_path / "s.zarr")
    s.append("text.embed", torch.ones(2, 4))
    s.close()
    meta_path = tmp_path / "s.zarr" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta["attributes"]["format_version"] = 99
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(StoreFormatError, match="version 99"):
        ActivationStore.open(tmp_path / "s.zarr")
    with pytest.raises(StoreError, match="already exists"):
        _make(tmp_path / "s.zarr")
    (tmp_path / "plain" / "keep.txt").write_text("x")
    with pytest.raises(StoreError, match="refusing"):
        _make(tmp_path / "plain", overwrite=True)
    assert (tmp_path / "plain" / "keep.txt").exists()


def test_single_writer_and_read_only(tmp_path: Path) -> None:
    s = _make(tmp_path / "s.zarr")
    with pytest.raises(StoreError, match="another process"):
        ActivationStore.open(tmp_path / "s.zarr", mode="a")
    r = ActivationStore.open(tmp_path / "s.zarr")
    with pytest.raises(StoreError, match="read-only"):
        r.append("text.embed", torch.ones(1, 4))
    s.close()
    ActivationStore.open(tmp_path / "s.zarr", mode="a").close()


def test_uncommitted_rows_do_not_exist(tmp_path: Path) -> None:
    s = _make(tmp_path / "s.zarr")
    x = torch.randn(12, 4)
    s.append("text.embed", x[:7])
    s.append("text.embed", x[7:], commit=False)  # written to chunks, never committed
    s.close()  # "crash": the process ends without commit
    a = ActivationStore.open(tmp_path / "s.zarr", mode="a")
    assert a.n_rows("text.embed") == 7
    assert torch.equal(a.read("text.embed"), x[:7])
    a.append("text.embed", x[7:])
    assert torch.equal(a.read("text.embed"), x)
    import zarr

    assert zarr.open_group(tmp_path / "s.zarr", mode="r")["acts/text.embed"].shape == (12, 4)


def test_shape_ahead_of_commit_is_truncated(tmp_path: Path) -> None:
    """A crash after the array shapes were persisted but before the attrs: attrs win."""
    s = _make(tmp_path / "s.zarr")
    s.append("text.embed", torch.ones(3, 4))
    snapshot = (tmp_path / "s.zarr" / "zarr.json").read_bytes()
    s.append("text.embed", torch.ones(4, 4))
    s.close()
    (tmp_path / "s.zarr" / "zarr.json").write_bytes(snapshot)
    a = ActivationStore.open(tmp_path / "s.zarr", mode="a")
    assert a.n_rows("text.embed") == 3
    import zarr

    assert zarr.open_group(tmp_path / "s.zarr", mode="r")["acts/text.embed"].shape == (3, 4)


def test_missing_chunk_is_named(tmp_path: Path) -> None:
    s = _make(tmp_path / "s.zarr")
    s.append("text.embed", torch.ones(12, 4))
    (tmp_path / "s.zarr" / "acts" / "text.embed" / "c" / "1" / "0").unlink()
    with pytest.raises(StoreError, match=r"acts/text.embed: chunk 1 .*missing"):
        s.read("text.embed")


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_zarr_python_reads_every_array(tmp_path: Path, compression: str) -> None:
    import zarr

    s = ActivationStore.create(
        tmp_path / "s.zarr",
        {"image.embed": 3, "text.embed": 3},
        dtype="float16",
        chunk_rows=4,
        compression=compression,
        concepts=(["a"], ["object"]),
    )
    x = torch.randn(10, 3).half()
    s.append_many(
        {"image.embed": x, "text.embed": x[:9]},
        labels=np.array([[True], [False]]),
        label_samples=[0, 1],
    )
    g = zarr.open_group(tmp_path / "s.zarr", mode="r")
    assert g.attrs["format_version"] == 1
    np.testing.assert_array_equal(g["acts/image.embed"][:], x.numpy())
    np.testing.assert_array_equal(g["acts/text.embed"][:], x[:9].numpy())
    for hook in ("image.embed", "text.embed"):
        idx = s.index(hook)
        for field in ("sample", "position", "modality"):
            np.testing.assert_array_equal(g[f"index/{hook}/{field}"][:], getattr(idx, field))
    np.testing.assert_array_equal(g["labels/concepts"][:], [[True], [False]])
    np.testing.assert_array_equal(g["labels/sample"][:], [0, 1])


def test_xarray_and_dask_read_the_store(tmp_path: Path) -> None:
    """The README's xarray/dask recipe: hooks of different row counts and widths
    open as one Dataset, a hook's index shares its row dimension, dask reads lazily."""
    import dask.array as da
    import xarray as xr

    path = tmp_path / "s.zarr"
    s = ActivationStore.create(
        path,
        {"image.embed": 3, "text.blocks.0.resid_post": 5},
        dtype="float16",
        chunk_rows=4,
        compression="zstd",
        concepts=(["red", "cube"], ["color", "object"]),
    )
    x, t = torch.randn(10, 3).half(), torch.randn(7, 5).half()
    s.append_many(
        {"image.embed": x, "text.blocks.0.resid_post": t},
        index={"image.embed": {"sample": np.arange(10)}},
        labels=np.array([[True, False], [False, True]]),
        label_samples=[3, 4],
    )
    acts = xr.open_zarr(path, group="acts", consolidated=False)
    assert dict(acts.sizes) == {
        "image.embed.row": 10,
        "image.embed.dim": 3,
        "text.blocks.0.resid_post.row": 7,
        "text.blocks.0.resid_post.dim": 5,
    }
    np.testing.assert_array_equal(acts["image.embed"].values, x.numpy())
    np.testing.assert_array_equal(acts["text.blocks.0.resid_post"].values, t.numpy())
    index = xr.open_zarr(path, group="index/image.embed", consolidated=False)
    both = xr.merge([acts["image.embed"], index])
    np.testing.assert_array_equal(both["sample"].values, np.arange(10))
    assert both["image.embed"].dims == ("image.embed.row", "image.embed.dim")
    labels = xr.open_zarr(path, group="labels", consolidated=False)
    np.testing.assert_array_equal(labels["concepts"].values, [[True, False], [False, True]])
    np.testing.assert_array_equal(labels["sample"].values, [3, 4])
    lazy = da.from_zarr(str(path), component="acts/image.embed")
    assert lazy.chunks == ((4, 4, 2), (3,))
    np.testing.assert_array_equal(lazy[2:9].compute(), x[2:9].numpy())


def test_dimension_names_must_match_the_array(tmp_path: Path) -> None:
    from vlmfast import _native

    with pytest.raises(InputError, match=r"acts/x: 1 dimension names for a 2-d array"):
        _native.store_create_array(str(tmp_path), "acts/x", "float32", 3, 4, dims=["a"])


def test_zarr_python_reads_bfloat16_after_register(tmp_path: Path) -> None:
    """A fresh interpreter with zarr-python and the one-line registration, values
    bit-identical, and no torch imported on the way."""
    import subprocess
    import sys

    s = ActivationStore.create(
        tmp_path / "s.zarr", {"image.embed": 3}, dtype="bfloat16", chunk_rows=4
    )
    x = torch.randn(10, 3).bfloat16()
    x[1, 2] = float("inf")
    s.append("image.embed", x[:1])
    s.append("image.embed", x[2:], skip_nonfinite=True)
    want = torch.cat([x[:1], x[2:]]).view(torch.int16).numpy()
    np.save(tmp_path / "want.npy", want)
    script = (
        "import sys, zarr, numpy as np\n"
        "from vlmfast.store.zarr_bfloat16 import register\n"
        "register()\n"
        f"g = zarr.open_group({str(tmp_path / 's.zarr')!r}, mode='r')\n"
        "a = g['acts/image.embed']\n"
        "assert str(a.dtype) == 'bfloat16', a.dtype\n"
        f"want = np.load({str(tmp_path / 'want.npy')!r})\n"
        "np.testing.assert_array_equal(a[:].view(np.int16), want)\n"
        "np.testing.assert_array_equal(a[3:7].view(np.int16), want[3:7])\n"
        "assert 'torch' not in sys.modules, 'reading a bf16 store imported torch'\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


def test_zarr_python_reads_bfloat16_in_a_vlmfast_process(tmp_path: Path) -> None:
    import zarr

    from vlmfast.store.zarr_bfloat16 import BFloat16

    s = ActivationStore.create(
        tmp_path / "s.zarr", {"text.embed": 5}, dtype="bfloat16", chunk_rows=3
    )
    x = torch.randn(7, 5).bfloat16()
    s.append("text.embed", x)
    got = zarr.open_group(tmp_path / "s.zarr", mode="r")["acts/text.embed"][:]
    np.testing.assert_array_equal(got.view(np.int16), x.view(torch.int16).numpy())
    assert BFloat16().to_json(zarr_format=3) == "bfloat16"


def test_sharded_store_is_readable_by_zarr_python(tmp_path: Path) -> None:
    import zarr

    s = ActivationStore.create(
        tmp_path / "s.zarr",
        {"image.embed": 3},
        chunk_rows=8,
        compression="zstd",
        shard_inner_rows=2,
    )
    x = torch.randn(13, 3)
    s.append("image.embed", x)
    np.testing.assert_array_equal(
        zarr.open_group(tmp_path / "s.zarr", mode="r")["acts/image.embed"][:], x.numpy()
    )


def test_overwrite_replaces_a_store(tmp_path: Path) -> None:
    s = _make(tmp_path / "s.zarr")
    s.append("text.embed", torch.ones(2, 4))
    s.close()
    t = _make(tmp_path / "s.zarr", overwrite=True)
    assert t.n_rows("text.embed") == 0
    shutil.rmtree(tmp_path / "s.zarr")


class _Crash(Exception):
    pass


@pytest.mark.parametrize("stage", ["flushed", "attrs_written"])
def test_crash_inside_commit_keeps_committed_rows(tmp_path: Path, stage: str) -> None:
    import zarr

    hook = "text.embed"
    s = _make(tmp_path / "s.zarr")
    x = torch.randn(23, 4)
    s.append(hook, x[:7])  # committed: 7 rows (a partial chunk of 5-row chunks)

    def crash(at: str) -> None:
        if at == stage:
            raise _Crash(at)

    s._crash_hook = crash
    with pytest.raises(_Crash):
        s.append(hook, x[7:23])  # chunk data and shapes durable, then the crash
    s.close()
    survived = 7 if stage == "flushed" else 23
    r = ActivationStore.open(tmp_path / "s.zarr")
    assert r.n_rows(hook) == survived
    assert torch.equal(r.read(hook), x[:survived])
    a = ActivationStore.open(tmp_path / "s.zarr", mode="a")  # truncates shapes ahead of the commit
    assert zarr.open_group(tmp_path / "s.zarr", mode="r")[f"acts/{hook}"].shape == (survived, 4)
    a.append(hook, x[survived:])
    a.close()
    assert torch.equal(ActivationStore.open(tmp_path / "s.zarr").read(hook), x)
    assert not list((tmp_path / "s.zarr").rglob("*.vlmfast-tmp"))


def test_direct_io_and_buffered_writes_leave_identical_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks of >= 1 MiB are written with O_DIRECT where the filesystem allows it;
    VLMFAST_STORE_DIRECT=0 writes them buffered. The files must be the same bytes,
    including the zero-padded partial chunk rewritten through a temp file."""
    x = torch.randn(2 * 512 + 300, 1024)  # 512-row chunks of 2 MiB
    stores = {}
    for mode in ("1", "0"):
        monkeypatch.setenv("VLMFAST_STORE_DIRECT", mode)
        path = tmp_path / f"s{mode}.zarr"
        s = ActivationStore.create(path, {"image.embed": 1024}, dtype="float32", chunk_rows=512)
        s.append("image.embed", x[:700])  # a committed partial chunk ...
        s.append("image.embed", x[700:])  # ... replaced through a temp file
        s.close()
        stores[mode] = path
        torch.testing.assert_close(ActivationStore.open(path).read("image.embed"), x)
    direct, buffered = (sorted(p.rglob("*")) for p in stores.values())
    assert [p.relative_to(stores["1"]) for p in direct] == [
        p.relative_to(stores["0"]) for p in buffered
    ]
    for a, b in zip(direct, buffered):
        if a.is_file() and a.name not in ("zarr.json", ".vlmfast.lock"):
            assert a.read_bytes() == b.read_bytes(), a
