"""A scene's views at training size, read from disk once: what both training stages use."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from scenes.io import load_image, load_mask
from scenes.types import Scene


@dataclass
class SceneImages:
    """Images, masks and cameras of every view, at the stored size divided by ``downscale``
    (``--downscale`` acts as a preprocessing step that shrank the files)."""

    names: list[str]
    splits: list[str]
    images: torch.Tensor  # (V, H, W, 3) uint8
    masks: torch.Tensor | None  # (V, H, W) bool: True = pixel kept
    viewmats: torch.Tensor  # (V, 4, 4) float32, OpenCV world-to-camera
    Ks: torch.Tensor  # (V, 3, 3) float32
    size: tuple[int, int]  # (width, height)

    @property
    def num_views(self) -> int:
        return int(self.viewmats.shape[0])


def load_views(scene: Scene, downscale: float = 1.0) -> SceneImages:
    """Read every frame's image (and mask) once, resized as ``downscale`` says."""
    cams = [f.camera.scaled(downscale) for f in scene.frames]
    size = (cams[0].width, cams[0].height)
    images = np.stack([load_image(f.image_path, size) for f in scene.frames])
    masks = None
    if any(f.mask_path for f in scene.frames):
        masks = torch.from_numpy(np.stack([
            load_mask(f.mask_path, size) if f.mask_path else np.ones(size[::-1], bool)
            for f in scene.frames]))
    return SceneImages(
        names=[f.name for f in scene.frames], splits=[f.split for f in scene.frames],
        images=torch.from_numpy(images), masks=masks,
        viewmats=torch.tensor(np.stack([c.w2c for c in cams]), dtype=torch.float32),
        Ks=torch.tensor(np.stack([c.K for c in cams]), dtype=torch.float32), size=size)
