"""Reads a rendered benchmark image back into a ``Scene`` (noise-free images).

Each grid cell is inspected: its lit pixels give the color (nearest palette
entry of the fully covered pixels) and the size and shape (the (shape, size)
mask, centred in the cell, that matches the lit pixels). It is the pixel-level
oracle used by the tests: the evaluation code scored with it must reach 100%.
"""

from __future__ import annotations

import numpy as np

from vlmfast.data.synthetic import spec
from vlmfast.data.synthetic.render import shape_mask
from vlmfast.data.synthetic.scene import Scene, SceneObject


def parse_image(image: np.ndarray) -> Scene:
    """uint8 [H, W, 3] -> the scene drawn in it (objects in row-major cell order)."""
    objects = []
    palette = {c: np.asarray(rgb) for c, rgb in spec.COLOR_RGB.items()}
    for row in range(spec.GRID):
        for col in range(spec.GRID):
            cell = image[
                row * spec.CELL : (row + 1) * spec.CELL, col * spec.CELL : (col + 1) * spec.CELL
            ]
            lit = cell.max(axis=2) > 0
            if not lit.any():
                continue
            best = None
            for size in spec.SIZES:
                side = spec.SIZE_PX[size]
                off = (spec.CELL - side) // 2
                for shape in spec.SHAPES:
                    m = np.zeros_like(lit)
                    m[off : off + side, off : off + side] = shape_mask(shape, size) > 0
                    err = int((m != lit).sum())
                    if best is None or err < best[0]:
                        best = (err, shape, size, off)
            assert best is not None
            _, shape, size, off = best
            solid = np.zeros_like(lit)
            side = spec.SIZE_PX[size]
            solid[off : off + side, off : off + side] = shape_mask(shape, size) > 0.99
            mean = cell[solid].astype(float).mean(axis=0)
            color = min(palette, key=lambda c: float(np.abs(palette[c] - mean).sum()))
            y0, x0 = row * spec.CELL + off, col * spec.CELL + off
            objects.append(SceneObject(shape, color, size, row, col, y0, x0))
    return Scene(tuple(objects))
