"""Concept vocabularies and caption labeling, checked against hand-labelled captions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vlmfast.data.concepts import (
    BUNDLED,
    IMAGENET_TEMPLATES,
    ConceptLabeler,
    ConceptLabels,
    Vocabulary,
    imagenet_prompts,
    load_vocabulary,
    object_attribute_prompts,
    tokenize,
)
from vlmfast.data.concepts.plurals import plural_forms, term_plurals
from vlmfast.errors import InputError, ShapeError


@pytest.fixture(scope="module")
def labeler() -> ConceptLabeler:
    return ConceptLabeler.default()


def test_bundled_vocabularies() -> None:
    objects = Vocabulary.bundled("imagenet_r200")
    assert len(objects) == 200
    wnids = [c.wnid for c in objects.concepts]
    assert len(set(wnids)) == 200 and all(w and w.startswith("n") and len(w) == 9 for w in wnids)
    assert wnids == sorted(wnids)  # the ImageNet-R list is in WordNet-id order
    assert {"goldfish", "tabby cat", "sea lion", "acorn", "scuba diver"} <= set(objects.names)
    vocab = load_vocabulary()
    assert set(vocab.kinds) == {"object", "color", "size", "material", "relation"}
    rels = [c.name for c in vocab.of_kind("relation")]
    assert rels == [
        "left of",
        "right of",
        "above",
        "below",
        "on",
        "under",
        "next to",
        "in front of",
        "behind",
    ]
    assert len(vocab.names) == len(set(vocab.names))
    assert set(BUNDLED) == {"imagenet_r200", "colors", "sizes", "materials", "relations", "coco80"}


# Hand-checked: caption -> exact concept set (names in vocabulary order irrelevant).
HAND_LABELLED = [
    ("A goldfish in a glass bowl.", {"goldfish", "glass"}),
    ("Two tabby cats sleeping on a red sofa", {"tabby cat", "on", "red"}),
    ("a sea lion resting on the rocks", {"sea lion", "on", "stone"}),
    (
        "Three geese walking beside a small wooden barn.",
        {"goose", "next to", "small", "wooden", "barn"},
    ),
    ("a beer glass to the left of two wine bottles", {"beer glass", "left of", "wine bottle"}),
    ("The Shih-Tzu is sitting under the grand piano", {"shih tzu", "under", "grand piano"}),
    ("a hot dog and a cheeseburger", {"hot dog", "cheeseburger"}),
    (
        "big grey wolves behind a yellow school bus",
        {"large", "gray", "timber wolf", "behind", "yellow", "school bus"},
    ),
    ("a tiny ladybug on top of a green leaf", {"small", "ladybug", "on", "green"}),
    ("a kitten in front of the strawberries", {"tabby cat", "in front of", "strawberry"}),
    ("butterflies above the pink flowers", {"monarch butterfly", "above", "pink"}),
    ("a man turned on", set()),
    ("A photo.", set()),
    (
        "a metal bucket right of a plastic broom",
        {"metal", "bucket", "right of", "plastic", "broom"},
    ),
    ("the lion below the volcano", {"lion", "below", "volcano"}),
]


@pytest.mark.parametrize(("caption", "expected"), HAND_LABELLED)
def test_hand_labelled_captions(labeler: ConceptLabeler, caption: str, expected: set[str]) -> None:
    assert set(labeler.label(caption)) == expected


def test_relations_found_between_noun_phrases(labeler: ConceptLabeler) -> None:
    assert labeler.relations("a red circle left of a blue square") == [
        ("circle", "left of", "square")
    ]
    assert labeler.relations("A dog is sitting on a couch.") == [("dog", "on", "couch")]
    assert labeler.relations("the cat to the right of the big white dog") == [
        ("cat", "right of", "dog")
    ]
    assert labeler.relations("left of a chair") == []  # no subject
    assert labeler.relations("a lamp that was turned on") == []  # no object


def test_label_matrix_shape_names_kinds(labeler: ConceptLabeler) -> None:
    caps = ["a lion next to a zebra", None, "", "two red pandas"]
    labels = labeler.label_texts(caps)
    assert labels.matrix.shape == (4, len(labeler.names)) and labels.matrix.dtype == np.bool_
    assert labels.rows_for(0) == ["lion", "zebra", "next to"]
    assert not labels.matrix[1].any() and not labels.matrix[2].any()
    assert set(labels.rows_for(3)) == {"giant panda", "red"}
    colors = labels.select(kinds=["color"], min_count=1)
    assert colors.names == ["red"] and colors.kinds == ["color"]
    assert labels.counts()["lion"] == 1


def test_plural_folding() -> None:
    assert plural_forms("bus") == ("buses",)
    assert plural_forms("butterfly") == ("butterflies",)
    assert plural_forms("monkey") == ("monkeys",)
    assert plural_forms("wolf") == ("wolves",)
    assert plural_forms("goldfish") == ()
    assert plural_forms("tomato") == ("tomatoes", "tomatos")
    assert term_plurals("great white shark") == ("great white sharks",)


def test_tokenize() -> None:
    assert tokenize("A Shih-Tzu's   bowl, 2 cats!") == [
        "a",
        "shih",
        "tzu",
        "s",
        "bowl",
        "2",
        "cats",
    ]


def test_custom_vocabulary(tmp_path: object) -> None:
    doc = {"kind": "object", "concepts": [{"name": "ox", "terms": ["ox", "bull"]}]}
    vocab = Vocabulary.from_dict(doc)
    lab = ConceptLabeler(vocab + Vocabulary.bundled("relations"))
    assert lab.label("two oxen behind a bull") == ["ox", "behind"]
    with pytest.raises(InputError, match="share concept names"):
        _ = vocab + vocab
    with pytest.raises(InputError, match="malformed"):
        Vocabulary.from_dict({"concepts": []})
    with pytest.raises(InputError, match="unknown bundled"):
        Vocabulary.bundled("nope")
    path = tmp_path / "v.json"  # type: ignore[operator]
    path.write_text(json.dumps(doc))
    assert load_vocabulary([str(path)]).names == ["ox"]


def test_concept_labels_validation() -> None:
    with pytest.raises(ShapeError):
        ConceptLabels(np.zeros((2, 3), bool), ["a", "b"], ["x", "x"])
    with pytest.raises(InputError, match="unique"):
        ConceptLabels(np.zeros((2, 2), bool), ["a", "a"], ["x", "x"])
    with pytest.raises(InputError, match="unknown concept"):
        ConceptLabels(np.zeros((2, 1), bool), ["a"], ["x"]).column("b")


def test_prompt_sets() -> None:
    assert len(IMAGENET_TEMPLATES) == 80 and len(set(IMAGENET_TEMPLATES)) == 80
    assert all(t.count("{}") == 1 for t in IMAGENET_TEMPLATES)
    assert imagenet_prompts("goldfish")[0] == "a bad photo of a goldfish."
    pairs = object_attribute_prompts(["dog", "car"], ["red", "stripes"])
    assert pairs[1] == ("dog", "stripes", "a photo of a dog with stripes")
    assert len(pairs) == 4
