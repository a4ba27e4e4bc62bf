"""Ground-truth correspondences between two views, from depth and poses.

Back-project view A's pixels with its depth, project them into view B, and keep the points
that B's depth says are visible there. Shared by the consistency figure, the correspondence
benchmark and the equivariance method's training pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scenes.cameras import Camera


@dataclass(frozen=True)
class Correspondences:
    """Pixel positions (N, 2) in views A and B that see the same surface point."""

    uv_a: np.ndarray
    uv_b: np.ndarray


def pixel_centres(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """(N, 2) pixel-centre coordinates ``(col + 0.5, row + 0.5)`` of integer pixels."""
    return np.stack([cols + 0.5, rows + 0.5], -1).astype(np.float64)


def surface_points(camera: Camera, depth: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """World points (N, 3) the pixels at ``uv`` see, from the depth of the pixel holding
    each (back-projection through the pixel's own position)."""
    cols = np.clip(np.floor(uv[:, 0]).astype(int), 0, depth.shape[1] - 1)
    rows = np.clip(np.floor(uv[:, 1]).astype(int), 0, depth.shape[0] - 1)
    return camera.unproject(uv, depth[rows, cols].astype(np.float64))


def correspondences(cam_a: Camera, depth_a: np.ndarray, cam_b: Camera, depth_b: np.ndarray,
                    *, stride: int = 2, tolerance: float = 0.03) -> Correspondences:
    """Ground-truth matches from A to B with an occlusion check against B's depth.

    ``tolerance`` is relative: a point is visible in B if B's depth there is within
    ``tolerance * z``.
    """
    h, w = depth_a.shape
    ys, xs = np.mgrid[0:h:stride, 0:w:stride]
    ys, xs = ys.ravel(), xs.ravel()
    valid = depth_a[ys, xs] > 0
    uv_a = pixel_centres(ys[valid], xs[valid])
    world = surface_points(cam_a, depth_a, uv_a)
    uv_b, z_b = cam_b.project(world)
    cols, rows = np.floor(uv_b[:, 0]).astype(int), np.floor(uv_b[:, 1]).astype(int)
    inside = (z_b > 0) & (cols >= 0) & (cols < depth_b.shape[1]) & (rows >= 0) \
        & (rows < depth_b.shape[0])
    seen = np.zeros_like(inside)
    seen[inside] = np.abs(depth_b[rows[inside], cols[inside]] - z_b[inside]) \
        < tolerance * z_b[inside]
    return Correspondences(uv_a[seen], uv_b[seen])
