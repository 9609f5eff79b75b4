"""Captions of synthetic scenes, their exact truth, and their hard negatives.

A caption is structured (mentions + optional relation) and rendered to text by
one of a few templates:

- ``object`` (one object): "a red circle", "a small red circle", "a circle", "a red shape";
- ``binding``: "a red circle and a blue square [and a green star]" (sizes optional);
- ``relation``: "a red circle left of a blue square".

Hard negatives change one thing and are false by construction (colors and
shapes are distinct within a scene): ``swapped_attributes`` swaps the colors of
two mentions, ``swapped_relation`` swaps the relation's arguments,
``wrong_color`` / ``wrong_shape`` put in a color / shape absent from the scene.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

import numpy as np

from vlmfast.data.synthetic import spec
from vlmfast.data.synthetic.scene import Scene, SceneObject

NEGATIVE_KINDS: tuple[str, ...] = (
    "swapped_attributes",
    "swapped_relation",
    "wrong_color",
    "wrong_shape",
)


@dataclass(frozen=True, slots=True)
class Mention:
    """One noun phrase: "a [size] [color] shape-word"; ``None`` fields are unsaid."""

    color: str | None
    shape: str | None
    size: str | None = None

    def text(self) -> str:
        words = []
        if self.size is not None:
            words.append(self.size)
        if self.color is not None:
            words.append(self.color)
        words.append(self.shape if self.shape is not None else "shape")
        article = "an" if words[0][0] in "aeiou" else "a"
        return " ".join([article, *words])

    def matches(self, obj: SceneObject) -> bool:
        return (
            (self.color is None or self.color == obj.color)
            and (self.shape is None or self.shape == obj.shape)
            and (self.size is None or self.size == obj.size)
        )


@dataclass(frozen=True, slots=True)
class Caption:
    """A structured caption; ``relation`` relates mention 0 (subject) to mention 1."""

    kind: str
    """``object``, ``binding`` or ``relation``."""
    mentions: tuple[Mention, ...]
    relation: str | None = None

    @property
    def text(self) -> str:
        if self.kind == "relation":
            assert self.relation is not None
            return f"{self.mentions[0].text()} {self.relation} {self.mentions[1].text()}"
        return " and ".join(m.text() for m in self.mentions)

    def bound_relations(self) -> set[str]:
        """The bound relation names the caption says, from its subject (mention 0) and
        object (mention 1): "a red circle right of a blue square" -> ``blue left of red``,
        ``square left of circle`` (``vlmfast.data.concepts.bound_relations``); empty
        without a relation."""
        from vlmfast.data.concepts.bound_relations import caption_bound_relations

        if self.kind != "relation" or self.relation is None:
            return set()
        a, b = self.mentions[0], self.mentions[1]
        return caption_bound_relations(
            {"color": a.color, "shape": a.shape},
            self.relation,
            {"color": b.color, "shape": b.shape},
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "text": self.text,
            "kind": self.kind,
            "relation": self.relation,
            "mentions": [
                {"color": m.color, "shape": m.shape, "size": m.size} for m in self.mentions
            ],
        }


def caption_true(scene: Scene, caption: Caption) -> bool:
    """Whether the caption describes the scene: each mention matches a distinct
    object and the relation (if any) holds between the matched subject and object."""
    objs = scene.objects
    if len(caption.mentions) > len(objs):
        return False
    for assign in itertools.permutations(range(len(objs)), len(caption.mentions)):
        if not all(m.matches(objs[k]) for m, k in zip(caption.mentions, assign)):
            continue
        if caption.relation is None:
            return True
        a, b = objs[assign[0]], objs[assign[1]]
        if spec.relation_holds(caption.relation, a.row, a.col, b.row, b.col):
            return True
    return False


def _mention(obj: SceneObject, with_size: bool) -> Mention:
    return Mention(obj.color, obj.shape, obj.size if with_size else None)


def object_caption(rng: np.random.Generator, obj: SceneObject) -> Caption:
    """A one-object caption from one of four templates."""
    template = int(rng.integers(4))
    if template == 0:
        m = Mention(obj.color, obj.shape)
    elif template == 1:
        m = Mention(obj.color, obj.shape, obj.size)
    elif template == 2:
        m = Mention(None, obj.shape)
    else:
        m = Mention(obj.color, None)
    return Caption("object", (m,))


def binding_caption(rng: np.random.Generator, scene: Scene, first: int | None = None) -> Caption:
    """All objects, in random order (object ``first`` first when given)."""
    order = list(rng.permutation(len(scene.objects)))
    if first is not None:
        order.remove(first)
        order.insert(0, first)
    with_size = bool(rng.random() < 0.3)
    return Caption("binding", tuple(_mention(scene.objects[k], with_size) for k in order))


def relation_caption(
    rng: np.random.Generator,
    scene: Scene,
    *,
    allowed: frozenset[tuple[str, str]] | None = None,
    banned: frozenset[tuple[str, str]] = frozenset(),
    involve: int | None = None,
) -> Caption | None:
    """A true relation caption between two objects, or ``None`` if none qualifies.

    ``allowed`` restricts (relation, subject shape) to that set; ``banned``
    excludes pairings; ``involve`` requires that object to be subject or object.
    """
    options = []
    for i, rel, j in scene.relations():
        key = (rel, scene.objects[i].shape)
        if key in banned or (allowed is not None and key not in allowed):
            continue
        if involve is not None and involve not in (i, j):
            continue
        options.append((i, rel, j))
    if not options:
        return None
    i, rel, j = options[int(rng.integers(len(options)))]
    with_size = bool(rng.random() < 0.2)
    ments = (_mention(scene.objects[i], with_size), _mention(scene.objects[j], with_size))
    return Caption("relation", ments, rel)


def hard_negatives(rng: np.random.Generator, scene: Scene, caption: Caption) -> dict[str, Caption]:
    """The hard negatives that apply to ``caption`` (each one false for ``scene``)."""
    out: dict[str, Caption] = {}
    ments = list(caption.mentions)
    if len(ments) >= 2 and ments[0].color is not None and ments[1].color is not None:
        swapped = [replace(ments[0], color=ments[1].color), replace(ments[1], color=ments[0].color)]
        out["swapped_attributes"] = replace(caption, mentions=(*swapped, *ments[2:]))
    if caption.kind == "relation":
        out["swapped_relation"] = replace(caption, mentions=(ments[1], ments[0]))
    present_colors = {o.color for o in scene.objects}
    present_shapes = {o.shape for o in scene.objects}
    colored = [k for k, m in enumerate(ments) if m.color is not None]
    if colored:
        k = colored[int(rng.integers(len(colored)))]
        absent = [c for c in spec.COLORS if c not in present_colors]
        new = list(ments)
        new[k] = replace(ments[k], color=absent[int(rng.integers(len(absent)))])
        out["wrong_color"] = replace(caption, mentions=tuple(new))
    shaped = [k for k, m in enumerate(ments) if m.shape is not None]
    if shaped:
        k = shaped[int(rng.integers(len(shaped)))]
        absent = [s for s in spec.SHAPES if s not in present_shapes]
        new = list(ments)
        new[k] = replace(ments[k], shape=absent[int(rng.integers(len(absent)))])
        out["wrong_shape"] = replace(caption, mentions=tuple(new))
    return out


def training_negatives(
    rng: np.random.Generator, scene: Scene, caption: Caption
) -> dict[str, Caption]:
    """``hard_negatives`` without the ones holding a held-out combination (what the
    ``train``/``test`` splits and the training's re-captions use)."""
    return {
        k: c for k, c in hard_negatives(rng, scene, caption).items() if not heldout_combinations(c)
    }


def flipped_relation(caption: Caption) -> Caption | None:
    """The relation word replaced by its inverse ("A left of B" -> "A right of B").

    False whenever the caption is true (relations are strict), and it says the
    same as the swapped-relation negative ("B left of A") with different words. A
    training-only negative (not one of ``NEGATIVE_KINDS``): unlike the swapped
    arguments, it differs from the true caption by a token, so it teaches the
    image tower relative positions before the text tower has learned word order.
    """
    if caption.kind != "relation" or caption.relation is None:
        return None
    return replace(caption, relation=spec.INVERSE_RELATION[caption.relation])


def heldout_combinations(caption: Caption) -> list[str]:
    """The held-out combinations a caption's text contains (empty for training-safe text)."""
    found = [
        f"{m.color} {m.shape}"
        for m in caption.mentions
        if (m.color, m.shape) in spec.HELDOUT_COLOR_SHAPE
    ]
    subject = caption.mentions[0].shape
    if (caption.relation, subject) in spec.HELDOUT_RELATION_SUBJECT:
        found.append(f"{subject} {caption.relation}")
    return found


def parse_caption(text: str) -> Caption:
    """The structured caption of a benchmark text (inverse of ``Caption.text``).

    Raises ``ValueError`` for text outside the benchmark's grammar:
    ``mention (and mention)*`` or ``mention relation mention`` with
    ``mention = a|an [size] [color] shape-word|"shape"``.
    """
    words = text.lower().split()
    pos = 0

    def mention() -> Mention:
        nonlocal pos
        if pos >= len(words) or words[pos] not in ("a", "an"):
            raise ValueError(f"expected 'a'/'an' at word {pos} of {text!r}")
        pos += 1
        size = color = None
        if pos < len(words) and words[pos] in spec.SIZES:
            size, pos = words[pos], pos + 1
        if pos < len(words) and words[pos] in spec.COLORS:
            color, pos = words[pos], pos + 1
        if pos >= len(words) or (words[pos] not in spec.SHAPES and words[pos] != "shape"):
            raise ValueError(f"expected a shape word at word {pos} of {text!r}")
        shape = None if words[pos] == "shape" else words[pos]
        pos += 1
        return Mention(color, shape, size)

    first = mention()
    rest = " ".join(words[pos:])
    for rel in spec.RELATIONS:
        if rest.startswith(rel + " "):
            pos += len(rel.split())
            second = mention()
            if pos != len(words):
                raise ValueError(f"trailing words in {text!r}")
            return Caption("relation", (first, second), rel)
    ments = [first]
    while pos < len(words):
        if words[pos] != "and":
            raise ValueError(f"expected 'and' or a relation at word {pos} of {text!r}")
        pos += 1
        ments.append(mention())
    return Caption("object" if len(ments) == 1 else "binding", tuple(ments))
