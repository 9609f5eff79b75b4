"""Labeling captions with concepts: tokens, plural folding, multi-word terms, relations.

Captions are lower-cased and split into word tokens (letters and digits;
hyphens and apostrophes split words, so "shih-tzu" matches "shih tzu"). Every
term of every concept, and every plural of object/attribute terms, is matched
greedily, longest first, left to right: "sea lion" is a sea lion and not a lion,
"beer glass" is an object and not the material glass.

A relation phrase ("left of", "to the left of", "next to", "under", ...) counts
only between two noun phrases: a content word before it (skipping copulas and
posture verbs: "a dog *is sitting* on a couch") and a content word after it
(skipping articles, numbers and attribute words: "... left of *a big red* ball").
This is a heuristic without a parser; ``relations(text)`` shows what it found.

A relation label is unordered: ``left of`` says a caption relates two things by a
left/right phrase, not which is where (on images, where both of a pair hold at once, it
says only "two objects in different columns / rows"). Bound relations (``red left of
blue``) are built by :mod:`vlmfast.data.concepts.bound_relations` from a subject, a
relation and an object (the synthetic source binds its captions and scenes with it).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from vlmfast.data.concepts.labels import ConceptLabels
from vlmfast.data.concepts.plurals import term_plurals
from vlmfast.data.concepts.vocabulary import DEFAULT, Vocabulary, load_vocabulary

if TYPE_CHECKING:
    from vlmfast.data.records import PairRecord

_TOKEN = re.compile(r"[a-z0-9]+")

DETERMINERS: frozenset[str] = frozenset(
    [
        "a",
        "an",
        "the",
        "this",
        "that",
        "these",
        "those",
        "some",
        "several",
        "many",
        "two",
        "three",
        "four",
        "five",
        "six",
        "seven",
        "eight",
        "nine",
        "ten",
        "one",
        "another",
        "his",
        "her",
        "their",
        "its",
        "my",
        "our",
        "your",
    ]
)
SKIP_BEFORE: frozenset[str] = frozenset(
    [
        "is",
        "are",
        "was",
        "were",
        "be",
        "being",
        "been",
        "sits",
        "sit",
        "sitting",
        "standing",
        "stands",
        "stand",
        "lying",
        "lies",
        "laying",
        "lays",
        "placed",
        "located",
        "parked",
        "seated",
        "resting",
        "rests",
        "hanging",
        "hangs",
        "perched",
        "that",
        "which",
        "who",
        "just",
        "also",
        "still",
    ]
)
STOPWORDS: frozenset[str] = (
    DETERMINERS
    | SKIP_BEFORE
    | frozenset(
        [
            "and",
            "or",
            "of",
            "to",
            "in",
            "at",
            "with",
            "for",
            "from",
            "as",
            "while",
            "it",
            "there",
            "here",
            "very",
        ]
    )
)


def tokenize(text: str) -> list[str]:
    """Lower-case word tokens."""
    return _TOKEN.findall(text.lower())


@dataclass(frozen=True)
class TermMatch:
    """A vocabulary term found in a caption: tokens ``[start, end)`` name ``concept``."""

    start: int
    end: int
    concept: int


class ConceptLabeler:
    """Maps captions to concept sets of a ``Vocabulary``."""

    def __init__(self, vocabulary: Vocabulary) -> None:
        self.vocabulary = vocabulary
        self.names = vocabulary.names
        self.kinds = vocabulary.kinds
        self._index: dict[str, list[tuple[tuple[str, ...], int]]] = {}
        self._object_names: dict[str, int] = {}
        for ci, concept in enumerate(vocabulary.concepts):
            forms = set(concept.terms)
            if concept.kind != "relation":
                if concept.plurals is not None:
                    forms.update(concept.plurals)
                else:
                    for term in concept.terms:
                        forms.update(term_plurals(term))
            for form in forms:
                toks = tuple(tokenize(form))
                if toks:
                    self._index.setdefault(toks[0], []).append((toks, ci))
            if concept.kind == "object":
                for form in (concept.name, *concept.terms, *concept.aliases):
                    self._object_names.setdefault(form.lower(), ci)
        for entries in self._index.values():
            entries.sort(key=lambda e: -len(e[0]))  # longest first
        self._attribute_words = {
            toks[0]
            for entries in self._index.values()
            for toks, ci in entries
            if self.kinds[ci] in ("color", "size", "material") and len(toks) == 1
        }

    @classmethod
    def default(cls) -> ConceptLabeler:
        """Labeler over the bundled vocabularies (ImageNet-R 200, colors, sizes, materials, relations)."""
        return cls(load_vocabulary(DEFAULT))

    # -- matching ------------------------------------------------------------
    def matches(self, text: str) -> list[TermMatch]:
        """Longest-first, non-overlapping term matches, left to right (relations unchecked)."""
        toks = tokenize(text)
        out: list[TermMatch] = []
        i = 0
        while i < len(toks):
            for form, ci in self._index.get(toks[i], ()):
                if tuple(toks[i : i + len(form)]) == form:
                    out.append(TermMatch(i, i + len(form), ci))
                    i += len(form)
                    break
            else:
                i += 1
        return out

    def _subject(self, toks: list[str], start: int) -> int | None:
        k = start - 1
        while k >= 0 and toks[k] in SKIP_BEFORE:
            k -= 1
        if k >= 0 and toks[k] not in STOPWORDS:
            return k
        return None

    def _object(self, toks: list[str], end: int) -> int | None:
        k = end
        while k < len(toks) and (
            toks[k] in DETERMINERS or toks[k].isdigit() or toks[k] in self._attribute_words
        ):
            k += 1
        if k < len(toks) and toks[k] not in STOPWORDS:
            return k
        # an attribute word used as the noun ("left of the red")
        if k > end and toks[k - 1] in self._attribute_words:
            return k - 1
        return None

    def relations(self, text: str) -> list[tuple[str, str, str]]:
        """(subject word, relation concept, object word) for every accepted relation phrase."""
        toks = tokenize(text)
        found = []
        for m in self.matches(text):
            if self.kinds[m.concept] != "relation":
                continue
            s, o = self._subject(toks, m.start), self._object(toks, m.end)
            if s is not None and o is not None:
                found.append((toks[s], self.names[m.concept], toks[o]))
        return found

    def concepts_in(self, text: str) -> set[int]:
        """Column indices of the concepts a caption mentions."""
        toks = tokenize(text)
        out = set()
        for m in self.matches(text):
            is_relation = self.kinds[m.concept] == "relation"
            if is_relation and (
                self._subject(toks, m.start) is None or self._object(toks, m.end) is None
            ):
                continue
            out.add(m.concept)
        return out

    def kinds_in(self, text: str) -> set[str]:
        """Kinds of the concepts a caption mentions."""
        return {self.kinds[c] for c in self.concepts_in(text)}

    def label(self, text: str) -> list[str]:
        """Names of the concepts a caption mentions, in vocabulary order."""
        return [self.names[c] for c in sorted(self.concepts_in(text))]

    # -- matrices ------------------------------------------------------------
    def label_texts(self, texts: Sequence[str | None]) -> ConceptLabels:
        """bool [len(texts), C] + names + kinds."""
        mat = np.zeros((len(texts), len(self.names)), dtype=bool)
        for r, text in enumerate(texts):
            if text:
                mat[r, sorted(self.concepts_in(text))] = True
        return ConceptLabels(mat, list(self.names), list(self.kinds))

    def label_records(self, records: Sequence[PairRecord]) -> ConceptLabels:
        """Caption labels, plus object labels from ``meta["objects"]`` (e.g. COCO instances)
        matched to object concepts by name or term (also through plural folding)."""
        labels = self.label_texts([r.caption for r in records])
        for r, rec in enumerate(records):
            for obj in rec.meta.get("objects", ()) or ():
                ci = self.object_column(str(obj))
                if ci is not None:
                    labels.matrix[r, ci] = True
        return labels

    def object_column(self, name: str) -> int | None:
        """The column of the object concept an annotation's category ``name`` (e.g. a COCO
        instance) is: by name, term or alias, else its first object term match."""
        name = name.lower()
        ci = self._object_names.get(name)
        if ci is None:
            hits = [m.concept for m in self.matches(name) if self.kinds[m.concept] == "object"]
            ci = hits[0] if hits else None
        return ci
