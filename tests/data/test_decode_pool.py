"""Decoding images on a thread pool gives exactly the records and report of one thread."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlmfast.data import open_source
from vlmfast.data.records import BadRecordReport, PairRecord
from vlmfast.data.sources.pending import LoadOnce, PendingRecord, decode_in_order


def _png(value: int, size: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (value, 255 - value, 7)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def messy(tmp_path: Path) -> Path:
    """60 rows: good images, missing files, empty captions, truncated and junk images."""
    (tmp_path / "img").mkdir()
    lines = []
    for i in range(60):
        name = f"img/{i}.png"
        kind = i % 7
        if kind == 1:
            lines.append({"image": f"img/missing{i}.png", "caption": f"gone {i}"})
            continue
        if kind == 2:
            (tmp_path / name).write_bytes(_png(i))
            lines.append({"image": name, "caption": "  "})
            continue
        data = _png(i, 32)
        if kind == 3:
            data = data[:50]
        if kind == 4:
            data = b"junk"
        (tmp_path / name).write_bytes(data)
        lines.append({"image": name, "caption": f"a red cube number {i}"})
    (tmp_path / "captions.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return tmp_path


def _run(path: Path, workers: int, **kw: object) -> tuple[list[tuple[int, str, bytes]], dict]:
    src = open_source(str(path), decode_workers=workers, **kw)  # type: ignore[arg-type]
    recs = [(r.sample_id, r.caption or "", r.image.tobytes()) for r in src if r.image]
    return recs, src.report.as_dict()


@pytest.mark.parametrize("kw", [{}, {"limit": 9}, {"limit": 1}, {"sample": 0.5, "seed": 3}])
def test_pool_matches_one_thread(messy: Path, kw: dict) -> None:
    want = _run(messy, 0, **kw)
    assert want[0], "the fixture has good records"
    for workers in (1, 2, 5):
        assert _run(messy, workers, **kw) == want, (workers, kw)


def test_stopping_early_reports_only_what_was_reached(messy: Path) -> None:
    """limit=2 stops at row 5 (rows 0 and 5 are good): rows past it were read and decoded
    ahead by the pool, but their failures must not reach the report."""
    recs, rep = _run(messy, 4, limit=2)
    assert [r[0] for r in recs] == [0, 5]
    assert rep["counts"] == {"missing_file": 1, "empty_caption": 1, "corrupt_image": 2}


def test_filtered_records_are_never_decoded() -> None:
    calls: list[int] = []

    def records(report: BadRecordReport):  # type: ignore[no-untyped-def]
        for i in range(40):

            def load(i: int = i) -> tuple[Image.Image | None, str, str]:
                calls.append(i)
                return Image.new("RGB", (2, 2)), "", ""

            yield PendingRecord(
                i, load, "a red dog left of a cat" if i % 4 == 0 else "nothing", where=str(i)
            )

    from vlmfast.data.sources.base import PairSource

    class Fake(PairSource):
        def _records(self, report: BadRecordReport):  # type: ignore[no-untyped-def,override]
            return records(report)

        def _content_key(self) -> dict:
            return {}

    got = [r.sample_id for r in Fake("fake", require="object", decode_workers=3)]
    assert got == list(range(0, 40, 4))
    assert sorted(calls) == got


def test_mixed_and_shared_loads_in_order() -> None:
    counter = {"n": 0}
    lock = threading.Lock()

    def decode() -> tuple[Image.Image | None, str, str]:
        with lock:
            counter["n"] += 1
        return Image.fromarray(np.full((3, 3, 3), 9, np.uint8)), "", ""

    shared = LoadOnce(decode)

    def records(report: BadRecordReport):  # type: ignore[no-untyped-def]
        yield PairRecord(0, Image.new("RGB", (1, 1)), "decoded already")
        report.add("bad_line", "line 2")
        for k in range(1, 6):
            yield PendingRecord(k, shared, f"caption {k}", where=f"k{k}")
        yield PendingRecord(6, lambda: (None, "corrupt_image", "boom"), "bad", where="k6")
        report.add("bad_line", "the last line")

    report = BadRecordReport()
    out = list(decode_in_order(records, report, workers=3))
    assert [r.sample_id for r in out] == [0, 1, 2, 3, 4, 5]
    assert counter["n"] == 1, "captions of one image share one decode"
    assert report.counts == {"bad_line": 2, "corrupt_image": 1}
    assert report.examples["corrupt_image"] == ["k6: boom"]


def test_a_failing_load_raises_in_order_and_stops_the_pool() -> None:
    def records(report: BadRecordReport):  # type: ignore[no-untyped-def]
        for k in range(50):

            def load(k: int = k) -> tuple[Image.Image | None, str, str]:
                if k == 7:
                    raise RuntimeError("decoder crashed on 7")
                return Image.new("RGB", (1, 1)), "", ""

            yield PendingRecord(k, load, "c", where=str(k))

    seen = []
    with pytest.raises(RuntimeError, match="crashed on 7"):
        for rec in decode_in_order(records, BadRecordReport(), workers=4):
            seen.append(rec.sample_id)
    assert seen == list(range(7))
    assert not [t for t in threading.enumerate() if t.name.startswith("vlmfast-decode")]


def test_bad_decode_workers() -> None:
    from vlmfast.errors import InputError

    with pytest.raises(InputError, match="decode_workers"):
        open_source("synthetic:n=3", decode_workers=-1)


@pytest.mark.parametrize("workers", [0, 3])
def test_records_after_skips_without_decoding(
    messy: Path, workers: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resumed job continues after a sample id: same records as the full pass from
    there, the limit counts what came before, and nothing before it is decoded."""
    from vlmfast.data.sources import folder as folder_mod
    from vlmfast.data.sources.images import decode_image

    full = list(open_source(str(messy), decode_workers=0))
    assert len(full) > 8
    decoded: list[str] = []

    def counting(path: Path) -> tuple[Image.Image | None, str, str]:
        decoded.append(path.name)
        return decode_image(path)

    monkeypatch.setattr(folder_mod, "decode_image", counting)
    src = open_source(str(messy), decode_workers=workers)
    k = 5
    rest = list(src.records_after(full[k - 1].sample_id, counted=k))
    assert [r.sample_id for r in rest] == [r.sample_id for r in full[k:]]
    first_decoded = min(int(name.split(".")[0].replace("missing", "")) for name in decoded)
    assert first_decoded > full[k - 1].sample_id, "nothing at or before the point is decoded"
    limited = open_source(str(messy), decode_workers=workers, limit=k + 2)
    got = list(limited.records_after(full[k - 1].sample_id, counted=k))
    assert [r.sample_id for r in got] == [r.sample_id for r in full[k : k + 2]]
    assert list(limited.records_after(full[k - 1].sample_id, counted=k + 2)) == []


def test_default_workers_share_the_host_among_torchrun_ranks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import os

    from vlmfast.data.sources.pending import MAX_DEFAULT_WORKERS, default_decode_workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(32)), raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert default_decode_workers() == MAX_DEFAULT_WORKERS
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert default_decode_workers() == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "64")
    assert default_decode_workers() == 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "junk")
    assert default_decode_workers() == MAX_DEFAULT_WORKERS
