"""Bound relation concepts: which object stands where, named by the objects' attributes.

An unordered relation label (``left of``, ``right of``, ``above``, ``below``) on an
image only says "two objects in different columns" (``left of``, ``right of``) or
"two objects in different rows" (``above``, ``below``): an image with two objects in
different columns has both ``left of`` and ``right of``. A *bound* relation says
which is which, over one attribute of each object: ``red left of blue`` (a red
object's centre is left of a blue object's centre), ``circle above square``.

Names are canonical: only ``left of`` and ``above`` are used, so ``blue right of red``
is the column ``red left of blue`` (the two say the same; keeping both would make
two identical columns). ``ATTRIBUTES`` are the attributes bound: ``color`` and
``shape``, each paired with the same attribute (color-color and shape-shape).

An image's bound relations come from its objects (:func:`image_bound_relations`: grid
cells when the objects have them, else box centres); a caption's from its subject and
object mentions (:func:`caption_bound_relations`), bound the same way, so the two
columns mean the same thing on both sides.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from vlmfast.errors import InputError

BOUND_KIND = "bound relation"
"""Concept kind of the bound relation columns (the unordered ones keep ``relation``)."""
CANONICAL: dict[str, tuple[str, bool]] = {
    "left of": ("left of", False),
    "right of": ("left of", True),
    "above": ("above", False),
    "below": ("above", True),
}
"""Relation -> (canonical relation, whether subject and object swap)."""
BOUND_RELATIONS: tuple[str, ...] = ("left of", "above")
"""The canonical relations of bound names."""
ATTRIBUTES: tuple[str, ...] = ("color", "shape")
"""Object attributes bound (each with itself: color-color, shape-shape)."""
UNORDERED_MEANING: dict[str, str] = {
    "left of": "two objects in different columns",
    "right of": "two objects in different columns",
    "above": "two objects in different rows",
    "below": "two objects in different rows",
}
"""What an unordered image relation label says (shown wherever the labels are printed)."""


def bound_name(subject: str, relation: str, obj: str) -> str:
    """The canonical bound name: ``("blue", "right of", "red")`` -> ``"red left of blue"``.

    Raises ``InputError`` for a relation outside ``CANONICAL``."""
    try:
        canon, swap = CANONICAL[relation]
    except KeyError:
        raise InputError(
            f"bound relation: unknown relation {relation!r}; expected one of {sorted(CANONICAL)}"
        ) from None
    a, b = (obj, subject) if swap else (subject, obj)
    return f"{a} {canon} {b}"


def reverse_name(name: str) -> str:
    """The same relation with its arguments swapped (``red left of blue`` -> ``blue left of
    red``); raises ``InputError`` for a name that is no canonical bound name."""
    parts = bound_parts(name)
    if parts is not None:
        return f"{parts[2]} {parts[1]} {parts[0]}"
    raise InputError(
        f"{name!r} is not a bound relation name (expected 'A left of B' / 'A above B')"
    )


def bound_parts(name: str) -> tuple[str, str, str] | None:
    """``(subject, relation, object)`` of a canonical bound name (``red left of blue`` ->
    ``("red", "left of", "blue")``), None for any other name."""
    for rel in BOUND_RELATIONS:
        a, sep, b = name.partition(f" {rel} ")
        if sep and a and b:
            return a, rel, b
    return None


def bound_vocabulary(values: Mapping[str, Sequence[str]]) -> list[str]:
    """The bound names over each attribute's values (``{"color": COLORS, "shape": SHAPES}``),
    every ordered pair of distinct values, per canonical relation, attribute-major."""
    return [
        f"{a} {rel} {b}"
        for attr in values
        for rel in BOUND_RELATIONS
        for a in values[attr]
        for b in values[attr]
        if a != b
    ]


def _position(obj: Mapping[str, Any]) -> tuple[float, float]:
    """(x, y) of an object: its grid cell (``col``, ``row``) when it has one, else its
    box centre (``box`` = top, left, bottom, right)."""
    if "col" in obj and "row" in obj:
        return float(obj["col"]), float(obj["row"])
    if "box" in obj:
        top, left, bottom, right = (float(v) for v in obj["box"])
        return (left + right) / 2.0, (top + bottom) / 2.0
    raise InputError(f"object {dict(obj)!r} has neither a grid cell (row, col) nor a box")


def image_bound_relations(
    objects: Sequence[Mapping[str, Any]], attributes: Iterable[str] = ATTRIBUTES
) -> set[str]:
    """Bound names true of an image with these objects (each a dict with ``color`` /
    ``shape`` and a grid cell ``row``/``col`` or a ``box``): ``A left of B`` when an
    object with value A has its x strictly below an object with value B's (``above``: y)."""
    attrs = tuple(attributes)
    pos = [_position(o) for o in objects]
    out: set[str] = set()
    for i, a in enumerate(objects):
        for j, b in enumerate(objects):
            if i == j:
                continue
            rels = [r for r, k in (("left of", 0), ("above", 1)) if pos[i][k] < pos[j][k]]
            for attr in attrs:
                va, vb = a.get(attr), b.get(attr)
                if va is None or vb is None or va == vb:
                    continue
                out.update(f"{va} {rel} {vb}" for rel in rels)
    return out


def caption_bound_relations(
    subject: Mapping[str, Any],
    relation: str | None,
    obj: Mapping[str, Any],
    attributes: Iterable[str] = ATTRIBUTES,
) -> set[str]:
    """Bound names a caption "subject relation object" says, for every attribute both
    mentions name (``a red circle right of a blue square`` -> ``blue left of red``,
    ``square left of circle``); empty without a relation."""
    if not relation:
        return set()
    out = set()
    for attr in attributes:
        va, vb = subject.get(attr), obj.get(attr)
        if va is not None and vb is not None and va != vb:
            out.add(bound_name(str(va), relation, str(vb)))
    return out
