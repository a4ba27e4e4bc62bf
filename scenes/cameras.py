"""Cameras, and the one conversion between camera conventions.

Scene files store camera-to-world poses in the OpenGL convention (x right, y up, camera
looking down -z), as nerfstudio and ScanNet++ do. gsplat, COLMAP and everything downstream
here use world-to-camera in the OpenCV convention (x right, y down, looking down +z).
:func:`opengl_c2w_to_opencv_w2c` is the only place that converts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Flips y and z: OpenGL camera axes -> OpenCV camera axes (an involution).
GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])


def opengl_c2w_to_opencv_w2c(c2w: np.ndarray) -> np.ndarray:
    """4x4 OpenGL camera-to-world -> 4x4 OpenCV world-to-camera."""
    c2w = np.asarray(c2w, dtype=np.float64)
    c2w_cv = c2w @ GL_TO_CV
    rot, trans = c2w_cv[:3, :3], c2w_cv[:3, 3]
    w2c = np.eye(4)
    w2c[:3, :3] = rot.T
    w2c[:3, 3] = -rot.T @ trans
    return w2c


def opencv_w2c_to_opengl_c2w(w2c: np.ndarray) -> np.ndarray:
    """Inverse of :func:`opengl_c2w_to_opencv_w2c` (used when writing scene files)."""
    return np.linalg.inv(np.asarray(w2c, dtype=np.float64)) @ GL_TO_CV


@dataclass(frozen=True)
class Camera:
    """A pinhole camera: intrinsics in pixels, OpenCV world-to-camera pose."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    w2c: np.ndarray  # (4, 4) float64, OpenCV convention

    @property
    def K(self) -> np.ndarray:
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @property
    def center(self) -> np.ndarray:
        """Camera centre in world coordinates."""
        rot, trans = self.w2c[:3, :3], self.w2c[:3, 3]
        return -rot.T @ trans

    def scaled(self, factor: float) -> Camera:
        """The same camera for an image resized by ``1 / factor`` (``factor`` > 1 shrinks)."""
        width, height = round(self.width / factor), round(self.height / factor)
        sx, sy = width / self.width, height / self.height
        return Camera(self.fx * sx, self.fy * sy, self.cx * sx, self.cy * sy, width, height,
                      self.w2c)

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World points (N, 3) -> pixel coordinates (N, 2) (pixel centres at +0.5) and depth."""
        cam = points @ self.w2c[:3, :3].T + self.w2c[:3, 3]
        z = cam[:, 2]
        uv = np.stack([self.fx * cam[:, 0] / z + self.cx, self.fy * cam[:, 1] / z + self.cy], -1)
        return uv, z

    def unproject(self, uv: np.ndarray, depth: np.ndarray) -> np.ndarray:
        """Pixel coordinates (N, 2) and z-depth (N,) -> world points (N, 3)."""
        x = (uv[:, 0] - self.cx) / self.fx * depth
        y = (uv[:, 1] - self.cy) / self.fy * depth
        cam = np.stack([x, y, depth], -1)
        rot, trans = self.w2c[:3, :3], self.w2c[:3, 3]
        return (cam - trans) @ rot


def relative_rotation_degrees(w2c_a: np.ndarray, w2c_b: np.ndarray) -> float:
    """Angle of the rotation between two world-to-camera poses."""
    rel = w2c_b[:3, :3] @ w2c_a[:3, :3].T
    cos = (np.trace(rel) - 1) / 2
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))
