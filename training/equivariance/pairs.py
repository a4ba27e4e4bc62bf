"""Training pairs of the equivariance method: two views of a scene, points sampled on each,
and the 3D distances between them that make positives and negatives.

The authors (3DCorrEnhance ``data_utils/dataset.py``) draw a random object and two of its
views whose relative rotation is at most 120 degrees, sample 3000 object-mask pixels per view
(with replacement when fewer) and back-project them with the rendered depth; every cross-view
pair is then scored by 3D distance in units of the object's size (normalised to extent 1).
Here the scene takes the object's place: the pixels are those with known depth (and inside
the scene mask), back-projected by :func:`scenes.correspondence.surface_points`, the same
ground truth :mod:`eval.correspondence` matches against, and distances are divided by the
scene's extent.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from scenes.cameras import Camera, relative_rotation_degrees
from scenes.correspondence import pixel_centres, surface_points
from scenes.holdout import training_views
from scenes.io import load_depth, load_mask, load_rgb
from scenes.load import load_scene
from scenes.types import SceneError

POINTS_PER_VIEW = 3000
MAX_ROTATION = 120.0


def view_pairs(w2cs: list[np.ndarray], max_rotation: float = MAX_ROTATION
               ) -> list[tuple[int, int]]:
    """Ordered pairs ``(a, b)``, ``a != b``, whose cameras differ by at most ``max_rotation``
    degrees (the authors reject wider ones)."""
    return [(a, b) for a in range(len(w2cs)) for b in range(len(w2cs))
            if a != b and relative_rotation_degrees(w2cs[a], w2cs[b]) <= max_rotation]


def scene_extent(cameras: list[Camera], depths: list[np.ndarray], masks: list[np.ndarray],
                 stride: int = 4) -> float:
    """Largest side of the bounding box of the surface the views see (the length the
    authors' objects are normalised to)."""
    points = []
    for cam, depth, mask in zip(cameras, depths, masks, strict=True):
        rows, cols = np.nonzero(mask[::stride, ::stride])
        points.append(surface_points(cam, depth, pixel_centres(rows * stride, cols * stride)))
    cloud = np.concatenate(points)
    return float((cloud.max(0) - cloud.min(0)).max())


@dataclass
class ViewPoints:
    """Sampled pixels of one view (pixel centres, (N, 2)) and the world points they see."""

    uv: np.ndarray
    xyz: np.ndarray


def sample_points(camera: Camera, depth: np.ndarray, mask: np.ndarray, count: int,
                  rng: np.random.Generator) -> ViewPoints:
    """``count`` pixels of ``mask`` (with replacement when it has fewer) and their 3D points."""
    rows, cols = np.nonzero(mask)
    if len(rows) == 0:
        raise ValueError("the view has no pixel with depth to sample")
    pick = rng.choice(len(rows), count, replace=len(rows) < count)
    uv = pixel_centres(rows[pick], cols[pick])
    return ViewPoints(uv, surface_points(camera, depth, uv))


def point_distances(a: np.ndarray, b: np.ndarray, extent: float) -> torch.Tensor:
    """(S, T) distances between world points, in units of the scene's extent."""
    return torch.cdist(torch.from_numpy(a), torch.from_numpy(b)).float() / extent


@dataclass
class TrainingScene:
    """A scene's training views in memory, with the pairs that may be drawn."""

    name: str
    images: list[np.ndarray]  # (H, W, 3) float32 in [0, 1]
    depths: list[np.ndarray]  # (H, W) float32, 0 = unknown
    masks: list[np.ndarray]  # (H, W) bool: depth known and inside the scene mask
    cameras: list[Camera]
    frames: list[str]
    extent: float
    pairs: list[tuple[int, int]]


def load_training_scene(scene_dir: str | Path, *, holdout_every: int = 0,
                        max_rotation: float = MAX_ROTATION) -> TrainingScene:
    """Read a scene's training views (test frames and every ``holdout_every``-th view left
    out); bad input is one :class:`SceneError` line naming the scene and the view."""
    scene = load_scene(scene_dir)
    views = training_views([f.split for f in scene.frames], holdout_every, hold_out_test=True)
    frames = [scene.frames[v] for v in views]
    missing = [f.name for f in frames if f.depth_path is None]
    if missing:
        raise SceneError(f"{scene.root}: the equivariance method needs a depth map and a pose "
                         f"for every training view; no depth for {', '.join(missing[:3])}"
                         + (" ..." if len(missing) > 3 else ""))
    images, depths, masks = [], [], []
    for f in frames:
        image = load_rgb(f.image_path)
        depth = load_depth(f.depth_path, f.depth_scale, (image.shape[1], image.shape[0]))
        mask = depth > 0
        if f.mask_path is not None:
            mask &= load_mask(f.mask_path, (image.shape[1], image.shape[0]))
        if not mask.any():
            raise SceneError(f"{scene.root}: view {f.name} has no pixel with depth (depth "
                             f"file {f.depth_path}); expected metres > 0 where known")
        images.append(image.astype(np.float32))
        depths.append(depth)
        masks.append(mask)
    cameras = [f.camera for f in frames]
    pairs = view_pairs([c.w2c for c in cameras], max_rotation)
    if not pairs:
        raise SceneError(f"{scene.root}: no two training views within {max_rotation:g} degrees "
                         f"of each other ({len(frames)} views); the method trains on such pairs")
    extent = scene_extent(cameras, depths, masks)
    if not extent > 0:
        raise SceneError(f"{scene.root}: the views' depth back-projects to a single point; "
                         "expected a surface with extent")
    return TrainingScene(scene.name, images, depths, masks, cameras, [f.name for f in frames],
                         extent, pairs)
