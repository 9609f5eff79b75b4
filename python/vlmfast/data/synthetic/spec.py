"""The fixed world of the synthetic concept-binding benchmark.

Shapes, colors, sizes, the position grid, the relations, and the compositional
split (which (color, shape) pairs and which (relation, subject shape) pairings
are held out of training). These are constants of the benchmark, shared by the
renderer, the caption generator, the tokenizer and the bundled model: changing
them changes the benchmark, so they are versioned by ``BENCHMARK_VERSION``.
"""

from __future__ import annotations

BENCHMARK_VERSION = 1

IMAGE_SIZE = 64
"""Rendered images are square, ``IMAGE_SIZE`` pixels on a side (RGB, uint8)."""

GRID = 4
"""Objects sit in the cells of a ``GRID`` x ``GRID`` grid (one object per cell)."""

CELL = IMAGE_SIZE // GRID
"""Side of one grid cell in pixels (16: one ViT patch of the bundled model)."""

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross", "star")

COLORS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange", "cyan", "white")

COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (30, 190, 50),
    "blue": (40, 80, 240),
    "yellow": (240, 225, 30),
    "purple": (155, 50, 215),
    "orange": (250, 135, 0),
    "cyan": (30, 215, 225),
    "white": (245, 245, 245),
}

SIZES: tuple[str, ...] = ("small", "large")

SIZE_PX: dict[str, int] = {"small": 9, "large": 14}
"""Side of an object's bounding box in pixels, per size word."""

JITTER_PX: dict[str, int] = {"small": 0, "large": 0}
"""Largest offset (each axis) of an object's box from its cell's centred position.

0: objects sit exactly centred in their cells, so each (shape, size) has one pixel
pattern inside its ViT patch. With a 1-2 px jitter, a 1.5M-parameter CLIP learned
colors at once but stayed at chance on shapes after 300 steps (40k images)."""

RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")

INVERSE_RELATION: dict[str, str] = {
    "left of": "right of",
    "right of": "left of",
    "above": "below",
    "below": "above",
}

HELDOUT_COLOR_SHAPE: frozenset[tuple[str, str]] = frozenset(
    {
        ("red", "triangle"),
        ("green", "star"),
        ("blue", "cross"),
        ("yellow", "circle"),
        ("purple", "square"),
        ("orange", "diamond"),
        ("cyan", "triangle"),
        ("white", "star"),
    }
)
"""(color, shape) pairs that never occur in the training split (one per color)."""

HELDOUT_RELATION_SUBJECT: frozenset[tuple[str, str]] = frozenset(
    {
        ("left of", "star"),
        ("right of", "diamond"),
        ("above", "cross"),
        ("below", "circle"),
    }
)
"""(relation, subject shape) pairings never captioned in training ("a ... star left of ...")."""

SPLITS: tuple[str, ...] = ("train", "test", "compositional")
"""``train`` and ``test`` share one distribution (no held-out combination anywhere);
``compositional`` has a held-out combination in every caption."""


def relation_holds(rel: str, a_row: int, a_col: int, b_row: int, b_col: int) -> bool:
    """Whether object A stands in relation ``rel`` to object B, from their grid cells."""
    if rel == "left of":
        return a_col < b_col
    if rel == "right of":
        return a_col > b_col
    if rel == "above":
        return a_row < b_row
    if rel == "below":
        return a_row > b_row
    raise ValueError(f"unknown relation {rel!r}")
