"""Turning any image Pillow opens into 8-bit RGB without losing its range."""

from __future__ import annotations

import numpy as np
from PIL import Image

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
