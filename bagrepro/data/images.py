"""Reading image files as RGB, with one-line :class:`DataError` messages for files that cannot be used."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, UnidentifiedImageError

from bagrepro.core.errors import DataError, one_line

#: File extensions (lower case) that count as images when scanning folders.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp")


def is_image_file(name: str) -> bool:
    """True for a non-hidden file name with an image extension (case-insensitive).

    Hidden names are skipped so that macOS ``._name.JPEG`` resource forks are not taken for images.
    """
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


class UnreadableImageError(DataError):
    """An image file that cannot be decoded (missing, truncated, not an image, ...).

    ``path`` and ``reason`` (one line, without the path) travel with it, so that a check can list
    ``<path>: <reason>``; ``str(error)`` is the usual one-line message naming the file.
    """

    def __init__(self, path: str, reason: str, message: str | None = None):
        super().__init__(message or f"cannot read image {path}: {reason}")
        self.path, self.reason = str(path), reason

    def __reduce__(self):  # picklable with its fields (it may cross from a worker process)
        return type(self), (self.path, self.reason, str(self))


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert a loaded image of any mode to RGB.

    16-bit greyscale is scaled to 8 bits (Pillow's own conversion would clip it at 255), palette images
    with transparency go through RGBA, and every other mode uses Pillow's conversion (CMYK, L, LA, 1, ...).
    """
    if image.mode == "RGB":
        return image.copy()
    if image.mode.startswith("I;16") or image.mode == "I":
        values = np.asarray(image, dtype=np.int64)
        if values.size and values.max() > 255:
            values = np.clip(values, 0, 65535) >> 8
        return Image.fromarray(np.clip(values, 0, 255).astype(np.uint8), mode="L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")


def open_rgb(path) -> Image.Image:
    """Open an image file and return it fully loaded as an RGB image.

    Any mode Pillow reads is converted (CMYK, greyscale ``L``, ``P``, ``RGBA``, ``I;16``, ...). The file is
    closed on return. A missing, unreadable, truncated or non-image file raises
    :class:`UnreadableImageError` (a :class:`DataError`) naming it.
    """
    path = os.fspath(path)
    try:
        with Image.open(path) as image:
            image.load()
            return _to_rgb(image)
    except FileNotFoundError:
        raise UnreadableImageError(path, "file not found", f"image file not found: {path}") from None
    except UnidentifiedImageError:  # Pillow's message repeats the path
        reason = "empty file (0 bytes)" if _is_empty(path) else "not an image file Pillow can identify"
        raise UnreadableImageError(path, reason) from None
    except (OSError, EOFError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        # an OSError about the file itself (permission denied, ...) names it: keep only what went wrong
        reason = exc.strerror if isinstance(exc, OSError) and exc.filename and exc.strerror else one_line(exc)
        raise UnreadableImageError(path, reason or type(exc).__name__) from None


def _is_empty(path: str) -> bool:
    try:
        return os.path.getsize(path) == 0
    except OSError:
        return False
