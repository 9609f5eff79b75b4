"""The COCO concept set: 80 categories, hand-checked captions, instance names, plumbing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vlmfast.data import open_source
from vlmfast.data.concepts.labeler import ConceptLabeler
from vlmfast.data.concepts.vocabulary import COCO, Vocabulary, load_vocabulary
from vlmfast.data.sources.base import parse_concepts
from vlmfast.errors import InputError

COCO_CATEGORIES = (
    "person bicycle car motorcycle airplane bus train truck boat|traffic light|fire hydrant|"
    "stop sign|parking meter|bench bird cat dog horse sheep cow elephant bear zebra giraffe "
    "backpack umbrella handbag tie suitcase frisbee skis snowboard|sports ball|kite|"
    "baseball bat|baseball glove|skateboard surfboard|tennis racket|bottle|wine glass|cup "
    "fork knife spoon bowl banana apple sandwich orange broccoli carrot|hot dog|pizza donut "
    "cake chair couch|potted plant|bed|dining table|toilet tv laptop mouse remote keyboard|"
    "cell phone|microwave oven toaster sink refrigerator book clock vase scissors|teddy bear|"
    "hair drier|toothbrush"
)


def _official() -> list[str]:
    out: list[str] = []
    for part in COCO_CATEGORIES.split("|"):
        part = part.strip()
        out.extend([part] if part in _MULTI else part.split())
    return out


_MULTI = {
    "traffic light", "fire hydrant", "stop sign", "parking meter", "sports ball",
    "baseball bat", "baseball glove", "tennis racket", "wine glass", "hot dog",
    "potted plant", "dining table", "cell phone", "teddy bear", "hair drier",
}  # fmt: skip


@pytest.fixture(scope="module")
def coco() -> ConceptLabeler:
    return ConceptLabeler(load_vocabulary(COCO))


def test_every_coco_category_is_an_object_concept_by_name_or_alias() -> None:
    vocab = Vocabulary.bundled("coco80")
    assert len(vocab) == 80 and set(vocab.kinds) == {"object"}
    official = _official()
    assert len(official) == 80
    known = {n for c in vocab.concepts for n in (c.name, *c.aliases)}
    assert set(official) <= known


HAND_LABELLED = [
    ("A dog sits on a couch.", {"dog", "couch", "on"}),
    ("Two men riding horses on the beach", {"person", "horse", "on"}),
    ("a woman holding an orange umbrella", {"person", "umbrella", "orange"}),
    ("Oranges and bananas in a bowl", {"orange fruit", "banana", "bowl"}),
    ("a red car left of a bus", {"car", "bus", "red", "left of"}),
    ("A man wearing a necktie talks on his cell phone", {"person", "necktie", "on", "cell phone"}),
    ("a bat flying at night", set()),
    ("Children playing with a frisbee next to a large elephant", {"person", "frisbee", "next to", "elephant", "large"}),
]  # fmt: skip


@pytest.mark.parametrize(("caption", "want"), HAND_LABELLED)
def test_hand_labelled_coco_captions(coco: ConceptLabeler, caption: str, want: set[str]) -> None:
    assert set(coco.label(caption)) == want


def test_coco_source_with_coco_concepts(tmp_path: Path) -> None:
    from PIL import Image

    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    (root / "val2017").mkdir()
    Image.new("RGB", (8, 8), (200, 0, 0)).save(root / "val2017" / "1.jpg")
    caps = {
        "images": [{"id": 1, "file_name": "1.jpg"}],
        "annotations": [{"id": 5, "image_id": 1, "caption": "A dog chasing a ball."}],
    }
    inst = {
        "images": caps["images"],
        "categories": [{"id": 18, "name": "dog"}, {"id": 55, "name": "orange"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 18},
            {"id": 2, "image_id": 1, "category_id": 55},
        ],
    }
    (root / "annotations" / "captions_val2017.json").write_text(json.dumps(caps))
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(inst))
    path = root / "annotations" / "captions_val2017.json"
    default = open_source(path)
    recs = list(default)
    assert "dog" not in default.labels(recs).names  # ImageNet-R has breeds, no "dog"
    src = open_source(path, concepts="coco")
    labels = src.labels(list(src))
    got = {n for n, v in zip(labels.names, labels.matrix[0]) if v}
    assert got == {"dog", "sports ball", "orange fruit"}  # caption + instances (alias)
    assert src.fingerprint() != default.fingerprint()
    assert open_source(path, concepts="default").fingerprint() != default.fingerprint()
    assert list(open_source(path, concepts="coco", require="object")) != []


def test_concepts_argument_is_checked(tmp_path: Path) -> None:
    assert parse_concepts(None) is None
    assert parse_concepts("coco") == COCO
    assert parse_concepts(["coco80", "colors"]) == ("coco80", "colors")
    with pytest.raises(InputError, match="'cocoa' is neither"):
        parse_concepts("cocoa")
    with pytest.raises(InputError, match="empty"):
        parse_concepts(" , ")
    with pytest.raises(InputError, match="synthetic source: concepts"):
        open_source("synthetic:n=3", concepts="coco")
    with pytest.raises(InputError, match="share concept names"):
        _ = open_source(tmp_path, concepts="coco,imagenet_r200").labeler
