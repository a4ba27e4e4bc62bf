"""A scene: frames (image, camera, optional mask, depth, labels) and optional initial points."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fit3d_hub.errors import FiT3DError
from scenes.cameras import Camera


class SceneError(FiT3DError, ValueError):
    """Bad scene input; the message names the file and the field."""


@dataclass(frozen=True)
class Frame:
    name: str
    image_path: Path
    camera: Camera
    mask_path: Path | None = None
    depth_path: Path | None = None
    label_path: Path | None = None
    depth_scale: float = 1000.0
    """Depth PNG units per metre (ScanNet++ and the synthetic scenes store millimetres)."""
    split: str = "train"
    """"train" for ``frames``, "test" for ScanNet++'s ``test_frames``."""


@dataclass
class Scene:
    name: str
    root: Path
    frames: list[Frame]
    points: np.ndarray | None = None  # (N, 3) float32, world
    point_colors: np.ndarray | None = None  # (N, 3) float32 in [0, 1]
    meta: dict = field(default_factory=dict)
