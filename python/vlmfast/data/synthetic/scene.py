"""Scenes of the synthetic benchmark: 1-3 objects with shape, color, size and grid cell.

Every scene is drawn from its own generator seeded by ``(seed, split, index)``,
so sample ``i`` is the same whatever ``n`` is and whichever samples are skipped:
sampling, limits and parallel generation never change the data.

Within a scene all colors differ and all shapes differ, so a caption naming a
(color, shape) pair refers to at most one object, and every hard negative
(swapped colors, swapped relation arguments, an absent color or shape) is false.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vlmfast.data.synthetic import spec


@dataclass(frozen=True, slots=True)
class SceneObject:
    """One object of a scene."""

    shape: str
    """Shape word (one of ``spec.SHAPES``)."""
    color: str
    """Color word (one of ``spec.COLORS``)."""
    size: str
    """Size word (``small`` or ``large``)."""
    row: int
    """Grid row of its cell (0 = top)."""
    col: int
    """Grid column of its cell (0 = left)."""
    y0: int
    """Top pixel row of its bounding box (after jitter)."""
    x0: int
    """Left pixel column of its bounding box (after jitter)."""

    @property
    def box(self) -> tuple[int, int, int, int]:
        """Pixel bounding box ``(y0, x0, y1, x1)``, end-exclusive."""
        side = spec.SIZE_PX[self.size]
        return (self.y0, self.x0, self.y0 + side, self.x0 + side)

    def as_dict(self) -> dict[str, object]:
        """Plain-data form (for ``PairRecord.meta`` and JSON)."""
        return {
            "shape": self.shape,
            "color": self.color,
            "size": self.size,
            "row": self.row,
            "col": self.col,
            "box": list(self.box),
        }


@dataclass(frozen=True, slots=True)
class Scene:
    """The objects of one image, in drawing order."""

    objects: tuple[SceneObject, ...]

    def relations(self) -> list[tuple[int, str, int]]:
        """Every relation that holds: ``(subject index, relation, object index)``."""
        out = []
        for i, a in enumerate(self.objects):
            for j, b in enumerate(self.objects):
                if i == j:
                    continue
                for rel in spec.RELATIONS:
                    if spec.relation_holds(rel, a.row, a.col, b.row, b.col):
                        out.append((i, rel, j))
        return out

    def bound_relations(self) -> set[str]:
        """The bound relation names that hold (``red left of blue``, ``circle above square``:
        ``vlmfast.data.concepts.bound_relations``), from the objects' grid cells."""
        from vlmfast.data.concepts.bound_relations import image_bound_relations

        return image_bound_relations([o.as_dict() for o in self.objects])


_SPLIT_ID = {name: k for k, name in enumerate(spec.SPLITS)}


def sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator that decides sample ``index`` of ``split`` for ``seed``."""
    return np.random.default_rng([int(seed), _SPLIT_ID[split], int(index)])


def _place(rng: np.random.Generator, shape: str, color: str, cell: int) -> SceneObject:
    size = spec.SIZES[int(rng.integers(len(spec.SIZES)))]
    side, jit = spec.SIZE_PX[size], spec.JITTER_PX[size]
    row, col = divmod(cell, spec.GRID)
    base_y = row * spec.CELL + (spec.CELL - side) // 2
    base_x = col * spec.CELL + (spec.CELL - side) // 2
    dy, dx = rng.integers(-jit, jit + 1, size=2)
    return SceneObject(shape, color, size, row, col, int(base_y + dy), int(base_x + dx))


def sample_scene(
    rng: np.random.Generator,
    n_objects: int,
    allow_heldout: bool,
    first: tuple[str, str] | None = None,
) -> Scene:
    """Draws a scene of ``n_objects`` with distinct colors, shapes and cells.

    ``first`` forces object 0's (color, shape); ``allow_heldout`` lets the other
    objects take a held-out (color, shape) pair.
    """
    cells = rng.permutation(spec.GRID * spec.GRID)[:n_objects]
    objects: list[SceneObject] = []
    used_colors: set[str] = set()
    used_shapes: set[str] = set()
    for k in range(n_objects):
        if k == 0 and first is not None:
            color, shape = first
        else:
            while True:
                color = spec.COLORS[int(rng.integers(len(spec.COLORS)))]
                shape = spec.SHAPES[int(rng.integers(len(spec.SHAPES)))]
                if color in used_colors or shape in used_shapes:
                    continue
                if not allow_heldout and (color, shape) in spec.HELDOUT_COLOR_SHAPE:
                    continue
                break
        used_colors.add(color)
        used_shapes.add(shape)
        objects.append(_place(rng, shape, color, int(cells[k])))
    return Scene(tuple(objects))
