"""Turning any image Pillow opens into 8-bit RGB without losing its range."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from fit3d_hub.budget import check_bytes
from fit3d_hub.errors import FiT3DError

BYTES_PER_PIXEL = 12
"""What decoding takes per pixel: the decoded image and the working copies of a resize."""
DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError,
                 struct.error, Image.DecompressionBombError, IndexError, TypeError)
"""What Pillow raises for damaged files (a broken PNG chunk is a ``SyntaxError``)."""

SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I")


def to_rgb8(image: Image.Image) -> Image.Image:
    """``image`` as 8-bit RGB. 16-bit (and 32-bit integer) grey images are scaled by their
    range (65535 when any value is above 255), where Pillow's ``convert("RGB")`` clips
    every value above 255 to white."""
    if image.mode in SIXTEEN_BIT:
        values = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if values.size and values.max() > 255 else 255.0
        image = Image.fromarray((values.clip(0, peak) / peak * 255).round().astype(np.uint8))
    return image.convert("RGB")


def check_pixels(width: int, height: int, path: str | Path) -> None:
    """Refuse (:class:`~fit3d_hub.errors.BudgetError`) an image whose header declares more
    pixels than the memory budget can decode."""
    check_bytes(BYTES_PER_PIXEL * width * height, str(path),
                f"decoding this {width}x{height} image")


def read_image(path: str | Path, *, error: type[FiT3DError] = FiT3DError) -> Image.Image:
    """The image at ``path`` as 8-bit RGB, decoded whole. Its size is read from the header
    and checked against the memory budget first; a missing, damaged or oversized file is
    ``error`` (one line naming it)."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            check_pixels(img.width, img.height, path)
            img.load()
            return to_rgb8(img)
    except FileNotFoundError:
        raise error(f"{path}: no such image file") from None
    except FiT3DError:
        raise
    except DECODE_ERRORS as err:
        raise error(f"{path}: not a readable image ({type(err).__name__}: "
                    f"{str(err).splitlines()[0] if str(err) else 'damaged'})") from None
