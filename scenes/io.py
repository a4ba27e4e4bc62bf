"""Reading a frame's files: images, masks, depth maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from fit3d_hub.images import read_image
from scenes.types import SceneError


def image_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as img:
            return img.size
    except FileNotFoundError:
        raise SceneError(f"{path}: image file is missing") from None
    except (UnidentifiedImageError, OSError) as err:
        raise SceneError(f"{path}: not a readable image ({err})") from None


def load_image(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """(H, W, 3) uint8 RGB as stored, or resized (bicubic, antialiased) to ``size`` =
    (width, height): the image as a preprocessing step that downscaled the files would have
    stored it."""
    img = read_image(path, error=SceneError)  # 16-bit images scaled, not clipped
    if size is not None and img.size != tuple(size):
        img = img.resize(tuple(size), Image.BICUBIC)
    return np.array(img)


def load_rgb(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1], resized to ``size`` = (width, height) if given."""
    return load_image(path, size).astype(np.float32) / 255.0


def load_mask(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """(H, W) bool: True where the pixel is valid (ScanNet++ masks: 255 = keep)."""
    with Image.open(path) as img:
        img = img.convert("L")
        if size is not None and img.size != tuple(size):
            img = img.resize(size, Image.NEAREST)
        return np.asarray(img) > 127


def load_depth(path: Path, scale: float, size: tuple[int, int] | None = None) -> np.ndarray:
    """(H, W) float32 metres; 0 = unknown. ``.npy`` (metres) or 16-bit PNG (``scale``/m)."""
    if path.suffix == ".npy":
        depth = np.load(path, allow_pickle=False).astype(np.float32)
        if size is not None and depth.shape[::-1] != tuple(size):
            depth = np.asarray(Image.fromarray(depth).resize(size, Image.NEAREST))
        return depth
    with Image.open(path) as img:
        if size is not None and img.size != tuple(size):
            img = img.resize(size, Image.NEAREST)
        return np.asarray(img, dtype=np.float32) / scale
