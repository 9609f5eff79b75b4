"""Pair sources: folder, COCO, WebDataset, iterables, synthetic; bad records counted."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlmfast.data import PairRecord, open_source
from vlmfast.errors import InputError


def _png(color: tuple[int, int, int], size: int = 8) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


def _jpg(color: tuple[int, int, int], size: int = 16) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(_png((255, 0, 0)))
    (tmp_path / "img" / "b.png").write_bytes(_png((0, 255, 0)))
    (tmp_path / "img" / "c.png").write_bytes(_png((0, 0, 255)))
    (tmp_path / "img" / "trunc.png").write_bytes(_png((9, 9, 9), 64)[:60])
    (tmp_path / "img" / "junk.png").write_bytes(b"not an image at all")
    lines = [
        {"image": "img/a.png", "caption": "a red dog left of a cat", "source": "x"},
        {"image": "img/missing.png", "caption": "gone"},
        {"image": "img/b.png", "caption": "   "},
        "{broken json",
        {"image": "img/trunc.png", "caption": "truncated"},
        {"image": "img/junk.png", "caption": "junk"},
        {"file": "img/b.png", "text": "a green lion"},
        {"image": "img/c.png", "caption": "a blue vase"},
    ]
    text = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines)
    (tmp_path / "captions.jsonl").write_text(text + "\n")
    return tmp_path


def test_folder_jsonl_skips_and_reports_every_bad_record(folder: Path) -> None:
    src = open_source(str(folder))
    recs = list(src)
    assert [r.caption for r in recs] == ["a red dog left of a cat", "a green lion", "a blue vase"]
    assert [r.sample_id for r in recs] == [0, 6, 7]  # ids count bad rows: stable numbering
    assert recs[0].image is not None and recs[0].image.getpixel((0, 0)) == (255, 0, 0)
    assert recs[0].meta == {"source": "x", "file": "img/a.png"}
    rep = src.report
    assert rep.n_ok == 3
    assert dict(rep.counts) == {
        "missing_file": 1,
        "empty_caption": 1,
        "bad_line": 1,
        "corrupt_image": 2,
    }
    assert any("trunc.png" in e for e in rep.examples["corrupt_image"])
    summary = rep.summary()
    assert "5 bad records skipped" in summary and "missing.png" in summary


def test_folder_csv_and_sidecar(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(_png((1, 2, 3)))
    (tmp_path / "y.png").write_bytes(_png((4, 5, 6)))
    (tmp_path / "data.csv").write_text('image,caption\nx.png,"first, with comma"\ny.png,second\n')
    recs = list(open_source(tmp_path / "data.csv"))
    assert [r.caption for r in recs] == ["first, with comma", "second"]
    side = tmp_path / "side"
    side.mkdir()
    (side / "p.png").write_bytes(_png((1, 1, 1)))
    (side / "p.txt").write_text("a sidecar caption\n")
    (side / "q.png").write_bytes(_png((2, 2, 2)))  # no caption -> counted
    src = open_source(f"folder:{side}")
    assert [r.caption for r in src] == ["a sidecar caption"]
    assert src.report.counts["empty_caption"] == 1


def test_limit_sample_and_determinism(folder: Path) -> None:
    src = open_source(str(folder), limit=2)
    assert [r.caption for r in src] == ["a red dog left of a cat", "a green lion"]
    assert [r.caption for r in src] == ["a red dog left of a cat", "a green lion"]  # re-iterable
    big = open_source("synthetic:n=200,seed=1", sample=0.25, seed=5)
    ids = [r.sample_id for r in big]
    assert ids == [r.sample_id for r in open_source("synthetic:n=200,seed=1", sample=0.25, seed=5)]
    assert 25 < len(ids) < 80
    other = [r.sample_id for r in open_source("synthetic:n=200,seed=1", sample=0.25, seed=6)]
    assert other != ids
    limited = [
        r.sample_id for r in open_source("synthetic:n=200,seed=1", sample=0.25, seed=5, limit=5)
    ]
    assert limited == ids[:5]  # limit takes a prefix of the same sample


def test_require_filter(folder: Path) -> None:
    src = open_source(str(folder), require="object,attribute,relation")
    # "a red dog left of a cat": cat (tabby cat), red, left of
    assert [r.caption for r in src] == ["a red dog left of a cat"]
    assert [r.caption for r in open_source(str(folder), require=["object", "color"])] == [
        "a red dog left of a cat",
        "a green lion",
        "a blue vase",
    ]
    with pytest.raises(InputError, match="unknown kind"):
        open_source(str(folder), require="objects")


def test_fingerprint_tracks_content_and_selection(folder: Path) -> None:
    a = open_source(str(folder)).fingerprint()
    assert a == open_source(str(folder)).fingerprint()
    assert a != open_source(str(folder), limit=1).fingerprint()
    cap = folder / "captions.jsonl"
    cap.write_text(cap.read_text().replace("a blue vase", "a blue jar"))
    assert a != open_source(str(folder)).fingerprint()
    s1 = open_source("synthetic:n=10,seed=0").fingerprint()
    assert s1 != open_source("synthetic:n=10,seed=1").fingerprint()


def _coco(tmp_path: Path) -> Path:
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    (root / "val2017").mkdir()
    (root / "val2017" / "1.jpg").write_bytes(_jpg((200, 0, 0)))
    (root / "val2017" / "2.jpg").write_bytes(_jpg((0, 200, 0))[:40])  # truncated
    (root / "val2017" / "3.jpg").write_bytes(_jpg((0, 0, 200)))
    caps = {
        "images": [
            {"id": 3, "file_name": "3.jpg"},
            {"id": 1, "file_name": "1.jpg"},
            {"id": 2, "file_name": "2.jpg"},
            {"id": 4, "file_name": "4.jpg"},
        ],
        "annotations": [
            {"id": 12, "image_id": 1, "caption": "Two zebras next to a lion."},
            {"id": 11, "image_id": 1, "caption": "A zebra."},
            {"id": 13, "image_id": 1, "caption": " "},
            {"id": 20, "image_id": 2, "caption": "a broken picture"},
            {"id": 30, "image_id": 3, "caption": "A blue tractor."},
            {"id": 40, "image_id": 4, "caption": "no file"},
        ],
    }
    inst = {
        "images": caps["images"],
        "categories": [{"id": 24, "name": "zebra"}, {"id": 1, "name": "person"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 24},
            {"id": 2, "image_id": 1, "category_id": 1},
            {"id": 3, "image_id": 3, "category_id": 1},
        ],
    }
    (root / "annotations" / "captions_val2017.json").write_text(json.dumps(caps))
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(inst))
    return root / "annotations" / "captions_val2017.json"


def test_coco_captions_with_instances(tmp_path: Path) -> None:
    path = _coco(tmp_path)
    src = open_source(str(path))
    recs = list(src)
    assert [(r.meta["image_id"], r.meta["caption_id"], r.caption) for r in recs] == [
        (1, 11, "A zebra."),
        (1, 12, "Two zebras next to a lion."),
        (3, 30, "A blue tractor."),
    ]
    assert recs[0].meta["objects"] == ["person", "zebra"]
    assert recs[0].image is not None and recs[0].image.size == (16, 16)
    assert dict(src.report.counts) == {"empty_caption": 1, "corrupt_image": 1, "missing_file": 1}
    labels = src.labels(recs)
    assert labels.column("zebra").tolist() == [True, True, False]
    assert labels.column("lion").tolist() == [False, True, False]
    assert labels.column("next to").tolist() == [False, True, False]
    assert labels.column("tractor").tolist() == [False, False, True]
    first = list(open_source(f"coco:{path}?captions=first"))
    assert [r.caption for r in first] == ["A zebra.", "A blue tractor."]


def _tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_webdataset_shards(tmp_path: Path) -> None:
    shards = tmp_path / "shards"
    shards.mkdir()
    _tar(
        shards / "cc-000.tar",
        [
            ("000000.jpg", _jpg((255, 0, 0))),
            ("000000.txt", b"a red bus"),
            ("000000.json", b'{"url": "http://x"}'),
            ("000001.jpg", _jpg((0, 255, 0))),
            ("000001.txt", b""),
            ("000002.jpg", b"garbage"),
            ("000002.txt", b"bad image"),
            ("000003.txt", b"no image"),
        ],
    )
    _tar(
        shards / "cc-001.tar",
        [("a/000004.jpg", _jpg((0, 0, 255))), ("a/000004.txt", b"a blue canoe")],
    )
    _tar(shards / "cc-002.tar", [("000005.jpg", _jpg((9, 9, 9))), ("000005.txt", b"lost")])
    data = (shards / "cc-002.tar").read_bytes()
    (shards / "cc-002.tar").write_bytes(data[:700])  # truncated shard
    src = open_source(str(shards / "cc-{000..002}.tar"))
    recs = list(src)
    assert [r.caption for r in recs] == ["a red bus", "a blue canoe"]
    assert recs[0].meta["url"] == "http://x" and recs[1].meta["key"] == "a/000004"
    counts = dict(src.report.counts)
    assert counts["empty_caption"] == 1
    assert counts["corrupt_image"] == 1
    assert counts["missing_file"] == 1
    assert counts["unreadable_member"] >= 1  # the truncated shard
    assert [r.caption for r in open_source(f"wds:{shards}")] == ["a red bus", "a blue canoe"]


def test_iterable_source(tmp_path: Path) -> None:
    img = Image.new("RGB", (4, 4), (1, 2, 3))
    (tmp_path / "f.png").write_bytes(_png((7, 7, 7)))
    items = [
        (img, "a cat"),
        (str(tmp_path / "f.png"), "from a path", {"k": 1}),
        (_png((3, 3, 3)), "from bytes"),
        (img, None),
        ("nope.png", "missing"),
        "not a tuple",
    ]
    src = open_source(items)
    recs = list(src)
    assert [r.caption for r in recs] == ["a cat", "from a path", "from bytes"]
    assert recs[1].meta == {"k": 1}
    assert src.report.n_bad == 3
    assert src.fingerprint() == open_source(list(items)).fingerprint()
    gen = open_source(iter(items))
    with pytest.raises(InputError, match="one-shot"):
        gen.fingerprint()
    assert len(list(gen)) == 3
    assert len(gen.fingerprint()) == 64
    with pytest.raises(InputError, match="already read"):
        list(gen)


def test_synthetic_source_ground_truth_and_labels() -> None:
    src = open_source("synthetic:n=12,seed=3,split=test")
    recs = list(src)
    assert len(recs) == 12 and all(isinstance(r, PairRecord) for r in recs)
    assert recs[0].image is not None and recs[0].image.size == (64, 64)
    lab = src.labels(recs)
    for r, rec in enumerate(recs):
        for obj in rec.meta["objects"]:
            assert lab.column(obj["shape"])[r] and lab.column(obj["color"])[r]
        assert lab.matrix[r].sum() >= 3
    assert set(lab.kinds) == {"object", "color", "size", "relation", "bound relation"}
    again = list(open_source("synthetic:n=12,seed=3,split=test"))
    assert all(
        np.array_equal(np.asarray(a.image), np.asarray(b.image)) for a, b in zip(recs, again)
    )


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("synthetic:n=x", "not a int"),
        ("synthetic:bogus=1", "bad item"),
        ("synthetic:split=nope", "split"),
        ("/no/such/thing", "cannot tell"),
        ("coco:/no/such.json", "no captions file"),
        ("wds:/no/such/dir/*.tar", "no .tar shards"),
    ],
)
def test_bad_specs_name_the_problem(spec: str, match: str) -> None:
    with pytest.raises(InputError, match=match):
        open_source(spec)


def test_bad_arguments() -> None:
    with pytest.raises(InputError, match="limit"):
        open_source("synthetic:n=3", limit=-1)
    with pytest.raises(InputError, match="sample"):
        open_source("synthetic:n=3", sample=1.5)
    with pytest.raises(InputError, match="iterable"):
        open_source(42)  # type: ignore[arg-type]
