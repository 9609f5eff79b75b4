"""English plural forms of vocabulary terms (generated, so captions fold to singulars).

Only the last word of a multi-word term is inflected ("sea lion" -> "sea lions").
"""

from __future__ import annotations

IRREGULAR: dict[str, tuple[str, ...]] = {
    "goose": ("geese",),
    "mouse": ("mice",),
    "person": ("people", "persons"),
    "man": ("men",),
    "woman": ("women",),
    "child": ("children",),
    "foot": ("feet",),
    "tooth": ("teeth",),
    "ox": ("oxen",),
    "knife": ("knives",),
    "leaf": ("leaves",),
    "wolf": ("wolves",),
    "scarf": ("scarves", "scarfs"),
    "calf": ("calves",),
    "shelf": ("shelves",),
    "cactus": ("cacti", "cactuses"),
    "hippopotamus": ("hippopotamuses", "hippopotami"),
    "octopus": ("octopuses", "octopi"),
    "binoculars": (),
}
UNCHANGED: frozenset[str] = frozenset(
    {"fish", "goldfish", "jellyfish", "starfish", "clownfish", "pufferfish", "sheep", "deer",
     "bison", "moose", "broccoli", "espresso", "ice", "cream", "aircraft", "series", "species",
     "shih", "chow", "smith"}
)  # fmt: skip
_ES_ENDINGS = ("s", "x", "z", "ch", "sh")


def plural_forms(word: str) -> tuple[str, ...]:
    """Plural spellings of one word (empty when the word has no distinct plural)."""
    if word in IRREGULAR:
        return IRREGULAR[word]
    if word in UNCHANGED or not word.isalpha():
        return ()
    if word.endswith(_ES_ENDINGS):
        return (word + "es",)
    if word.endswith("y") and len(word) > 1 and word[-2] not in "aeiou":
        return (word[:-1] + "ies",)
    if word.endswith("o") and len(word) > 1 and word[-2] not in "aeiou":
        return (word + "es", word + "s")
    return (word + "s",)


def term_plurals(term: str) -> tuple[str, ...]:
    """Plurals of a (possibly multi-word) term, inflecting its last word."""
    words = term.split()
    return tuple(" ".join([*words[:-1], p]) for p in plural_forms(words[-1]))
