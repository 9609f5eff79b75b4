"""Rendering synthetic scenes to RGB images.

Two implementations of one picture:

- ``render_scene`` (fast path): anti-aliased alpha masks per (shape, size) are
  computed once with PIL at 8x supersampling and blended into a numpy canvas;
- ``render_scene_pil`` (reference): the whole image is drawn with PIL polygons
  at 8x and box-downsampled.

They agree to within rounding (tested). Options: ``texture`` modulates object
pixels by diagonal stripes; ``noise_std`` adds Gaussian pixel noise (0-255 units)
from the sample's own generator, so noisy images stay deterministic.
"""

from __future__ import annotations

import math
from functools import cache, lru_cache

import numpy as np
from PIL import Image, ImageDraw

from vlmfast.data.synthetic import spec
from vlmfast.data.synthetic.scene import Scene

SUPERSAMPLE = 8


def _star(n: int = 5, outer: float = 0.5, inner: float = 0.21) -> list[tuple[float, float]]:
    pts = []
    for k in range(2 * n):
        r = outer if k % 2 == 0 else inner
        ang = -math.pi / 2 + k * math.pi / n
        pts.append((0.5 + r * math.cos(ang), 0.55 + r * math.sin(ang)))
    return pts


def _cross(arm: float = 0.34) -> list[tuple[float, float]]:
    lo, hi = 0.5 - arm / 2, 0.5 + arm / 2
    return [
        (lo, 0.0), (hi, 0.0), (hi, lo), (1.0, lo), (1.0, hi), (hi, hi),
        (hi, 1.0), (lo, 1.0), (lo, hi), (0.0, hi), (0.0, lo), (lo, lo),
    ]  # fmt: skip


POLYGONS: dict[str, list[tuple[float, float]] | None] = {
    "circle": None,  # drawn as an ellipse filling the box
    "square": [(0.06, 0.06), (0.94, 0.06), (0.94, 0.94), (0.06, 0.94)],
    "triangle": [(0.5, 0.0), (1.0, 0.95), (0.0, 0.95)],
    "diamond": [(0.5, 0.0), (1.0, 0.5), (0.5, 1.0), (0.0, 0.5)],
    "cross": _cross(),
    "star": _star(),
}
"""Each shape as a polygon in unit box coordinates (x, y), y pointing down."""


def _draw_shape(
    draw: ImageDraw.ImageDraw,
    shape: str,
    x0: float,
    y0: float,
    side: float,
    fill: tuple[int, ...] | int,
) -> None:
    # vertices snap to whole (super-sampled) pixels, so a shape rasterises the same
    # at every offset: the per-shape masks and the whole-image reference agree
    poly = POLYGONS[shape]
    if poly is None:
        draw.ellipse([x0, y0, x0 + side - 1, y0 + side - 1], fill=fill)
    else:
        draw.polygon(
            [(x0 + round(u * (side - 1)), y0 + round(v * (side - 1))) for u, v in poly], fill=fill
        )


@cache
def shape_mask(shape: str, size: str) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of ``shape`` at ``size``: float32 [side, side]."""
    side = spec.SIZE_PX[size]
    big = side * SUPERSAMPLE
    img = Image.new("L", (big, big), 0)
    _draw_shape(ImageDraw.Draw(img), shape, 0, 0, big, 255)
    arr = np.asarray(img, dtype=np.float32) / 255.0
    mask = arr.reshape(side, SUPERSAMPLE, side, SUPERSAMPLE).mean(axis=(1, 3))
    mask.setflags(write=False)
    return mask


@lru_cache(maxsize=1)
def stripe_pattern() -> np.ndarray:
    """Texture multiplier per pixel: diagonal stripes of 1.0 and 0.65, float32 [H, W, 1]."""
    yy, xx = np.mgrid[0 : spec.IMAGE_SIZE, 0 : spec.IMAGE_SIZE]
    pat = np.where(((xx + yy) // 2) % 2 == 0, 1.0, 0.65).astype(np.float32)
    pat.setflags(write=False)
    return pat[..., None]


def _finish(
    canvas: np.ndarray, texture: bool, noise_std: float, rng: np.random.Generator | None
) -> np.ndarray:
    if texture:
        canvas = canvas * stripe_pattern()
    if noise_std > 0:
        if rng is None:
            raise ValueError("noise_std > 0 needs the sample's rng")
        canvas = canvas + rng.standard_normal(canvas.shape, dtype=np.float32) * noise_std
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


def render_scene(
    scene: Scene,
    *,
    texture: bool = False,
    noise_std: float = 0.0,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Renders ``scene`` on a black background: uint8 [IMAGE_SIZE, IMAGE_SIZE, 3]."""
    canvas = np.zeros((spec.IMAGE_SIZE, spec.IMAGE_SIZE, 3), dtype=np.float32)
    for obj in scene.objects:
        mask = shape_mask(obj.shape, obj.size)[..., None]
        y0, x0, y1, x1 = obj.box
        rgb = np.asarray(spec.COLOR_RGB[obj.color], dtype=np.float32)
        region = canvas[y0:y1, x0:x1]
        canvas[y0:y1, x0:x1] = region * (1.0 - mask) + rgb * mask
    return _finish(canvas, texture, noise_std, rng)


def render_scene_pil(
    scene: Scene,
    *,
    texture: bool = False,
    noise_std: float = 0.0,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Reference renderer: PIL polygons on a supersampled canvas, box-downsampled."""
    big = spec.IMAGE_SIZE * SUPERSAMPLE
    img = Image.new("RGB", (big, big), (0, 0, 0))
    draw = ImageDraw.Draw(img)
    for obj in scene.objects:
        side = spec.SIZE_PX[obj.size] * SUPERSAMPLE
        _draw_shape(
            draw,
            obj.shape,
            obj.x0 * SUPERSAMPLE,
            obj.y0 * SUPERSAMPLE,
            side,
            spec.COLOR_RGB[obj.color],
        )
    arr = np.asarray(img, dtype=np.float32)
    s = spec.IMAGE_SIZE
    canvas = arr.reshape(s, SUPERSAMPLE, s, SUPERSAMPLE, 3).mean(axis=(1, 3))
    return _finish(canvas, texture, noise_std, rng)
