"""Concept vocabularies: bundled JSON data files or your own.

A vocabulary file is ``{"name", "kind", "description", "concepts": [{"name", "terms",
["wnid"], ["plurals"], ["aliases"]}]}``. Bundled: ``imagenet_r200`` (the 200 ImageNet-R classes,
kind ``object``), ``coco80`` (the 80 COCO categories, kind ``object``), ``colors``,
``sizes``, ``materials``, ``relations``. ``DEFAULT`` uses ImageNet-R; ``COCO`` swaps in
the COCO categories.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from vlmfast.errors import InputError

BUNDLED: tuple[str, ...] = (
    "imagenet_r200",
    "colors",
    "sizes",
    "materials",
    "relations",
    "coco80",
)
DEFAULT: tuple[str, ...] = ("imagenet_r200", "colors", "sizes", "materials", "relations")
"""The paper's concept set: 200 ImageNet classes plus attributes and relations."""
COCO: tuple[str, ...] = ("coco80", "colors", "sizes", "materials", "relations")
"""For COCO-style captions: the 80 COCO categories (dog, person, car, ...) instead of
ImageNet-R's fine-grained classes, which name no "dog" or "person"."""


@dataclass(frozen=True)
class Concept:
    """One concept and the caption phrases that name it."""

    name: str
    """Unique display name (the label column name)."""
    kind: str
    """``object``, ``color``, ``size``, ``material``, ``relation`` (or your own). A
    ``relation`` is unordered: on an image it says only "two objects in different columns /
    rows"; the ``bound relation`` kind (``red left of blue``) says which object is where."""
    terms: tuple[str, ...]
    """Lower-case phrases (singular) that name it in captions."""
    wnid: str | None = None
    """WordNet id for ImageNet classes."""
    plurals: tuple[str, ...] | None = None
    """Explicit plural phrases; ``None`` = generated from ``terms``."""
    aliases: tuple[str, ...] = ()
    """Names that identify the concept in object annotations (e.g. COCO instances) but
    are not matched in captions (COCO's "orange" fruit: in captions "orange" is a colour)."""


@dataclass
class Vocabulary:
    """An ordered list of concepts (order = label columns)."""

    concepts: list[Concept] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.concepts]

    @property
    def kinds(self) -> list[str]:
        return [c.kind for c in self.concepts]

    def __len__(self) -> int:
        return len(self.concepts)

    def __add__(self, other: Vocabulary) -> Vocabulary:
        clash = set(self.names) & set(other.names)
        if clash:
            raise InputError(f"vocabularies share concept names: {sorted(clash)[:5]}")
        return Vocabulary([*self.concepts, *other.concepts])

    def of_kind(self, kind: str) -> list[Concept]:
        return [c for c in self.concepts if c.kind == kind]

    @classmethod
    def from_dict(cls, doc: dict[str, Any], where: str = "vocabulary") -> Vocabulary:
        try:
            kind = doc["kind"]
            out = []
            for item in doc["concepts"]:
                terms = tuple(t.lower() for t in item.get("terms", [item["name"]]))
                plurals = item.get("plurals")
                out.append(
                    Concept(
                        name=item["name"],
                        kind=item.get("kind", kind),
                        terms=terms,
                        wnid=item.get("wnid"),
                        plurals=tuple(plurals) if plurals is not None else None,
                        aliases=tuple(a.lower() for a in item.get("aliases", ())),
                    )
                )
        except (KeyError, TypeError) as err:
            raise InputError(f"{where}: malformed vocabulary ({err})") from err
        return cls(out)

    @classmethod
    def from_file(cls, path: str | Path) -> Vocabulary:
        """A vocabulary JSON file of your own."""
        try:
            doc = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise InputError(f"cannot read vocabulary {path}: {err}") from err
        return cls.from_dict(doc, str(path))

    @classmethod
    def bundled(cls, name: str) -> Vocabulary:
        """One bundled vocabulary by name (see ``BUNDLED``)."""
        if name not in BUNDLED:
            raise InputError(f"unknown bundled vocabulary {name!r}; expected one of {BUNDLED}")
        text = (
            resources.files("vlmfast.data.concepts")
            .joinpath("vocab", f"{name}.json")
            .read_text("utf-8")
        )
        return cls.from_dict(json.loads(text), name)


def load_vocabulary(names: tuple[str, ...] | list[str] = DEFAULT) -> Vocabulary:
    """Bundled vocabularies (names) or JSON files (paths), concatenated in order."""
    vocab = Vocabulary()
    for name in names:
        part = Vocabulary.bundled(name) if name in BUNDLED else Vocabulary.from_file(name)
        vocab = vocab + part
    return vocab
