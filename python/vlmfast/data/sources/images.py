"""Decoding images defensively: a bad file becomes a counted reason, never a crash."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".jpg",
    ".jpeg",
    ".png",
    ".webp",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
)


def decode_image(data: bytes | Path) -> tuple[Image.Image | None, str, str]:
    """Fully decodes an image to RGB.

    Returns ``(image, "", "")`` or ``(None, reason, detail)`` with reason
    ``missing_file`` or ``corrupt_image`` (truncated, undecodable, empty).
    """
    try:
        if isinstance(data, Path):
            if not data.is_file():
                return None, "missing_file", "no such file"
            src: io.BytesIO | Path = data
        else:
            src = io.BytesIO(data)
        with Image.open(src) as img:
            img.load()  # truncated files fail here, not later in a worker
            return img.convert("RGB"), "", ""
    except (
        UnidentifiedImageError,
        OSError,
        SyntaxError,
        ValueError,
        Image.DecompressionBombError,
    ) as err:
        return None, "corrupt_image", f"{type(err).__name__}: {err}"
