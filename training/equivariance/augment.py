"""The equivariance method's augmentations (pure functions of their inputs and a generator).

The authors (3DCorrEnhance ``data_utils/dataset.py``, albumentations 1.3.1) apply, to each
view of a pair on its own: ``ShiftScaleRotate(shift 0.25, scale 0.25, rotate 45, p 0.5)``
to image, mask and points (constant 0 border; points that leave the image are dropped with
their 3D points), then ``GaussianBlur(1-3)``, ``ISONoise``, ``GaussNoise``, ``CLAHE`` and
``RandomBrightnessContrast``, each with p 0.5. ISONoise and CLAHE need OpenCV and are left
out (docs/faithfulness.md); the others follow albumentations' defaults.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

SHIFT_LIMIT = 0.25
SCALE_LIMIT = 0.25
ROTATE_LIMIT = 45.0
GEOMETRIC_P = 0.5
COLOUR_P = 0.5
NOISE_VAR = (10.0, 50.0)  # GaussNoise's var_limit, on the 0-255 scale
BRIGHTNESS, CONTRAST = 0.2, 0.2
BLUR_SIGMA = 0.8  # OpenCV's sigma for a 3x3 kernel when none is given


def affine_matrix(width: int, height: int, angle: float, scale: float, dx: float,
                  dy: float) -> np.ndarray:
    """2x3 matrix of ShiftScaleRotate in pixel-centre coordinates (``u = col + 0.5``):
    rotate ``angle`` degrees counter-clockwise and scale about the image centre, then shift
    by ``dx * width``, ``dy * height`` (OpenCV's ``getRotationMatrix2D`` convention)."""
    a = math.radians(angle)
    alpha, beta = scale * math.cos(a), scale * math.sin(a)
    cx, cy = width / 2, height / 2
    return np.array([[alpha, beta, (1 - alpha) * cx - beta * cy + dx * width],
                     [-beta, alpha, beta * cx + (1 - alpha) * cy + dy * height]])


def warp(image: torch.Tensor, matrix: np.ndarray, mode: str = "bilinear") -> torch.Tensor:
    """``(C, H, W)`` warped so that output pixel ``M @ p`` shows input pixel ``p``; zeros
    outside."""
    _, h, w = image.shape
    inverse = np.linalg.inv(np.vstack([matrix, [0, 0, 1]]))[:2]
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64) + 0.5,
                            torch.arange(w, dtype=torch.float64) + 0.5, indexing="ij")
    src = torch.stack([xs, ys, torch.ones_like(xs)], -1) @ torch.from_numpy(inverse).T
    grid = torch.stack([src[..., 0] / w * 2 - 1, src[..., 1] / h * 2 - 1], -1)
    return F.grid_sample(image[None].float(), grid[None].to(image.device, torch.float32),
                         mode=mode, padding_mode="zeros", align_corners=False)[0]


@dataclass
class Augmented:
    """One view after augmentation: image ``(3, H, W)`` in [0, 1] and the kept points."""

    image: torch.Tensor
    uv: np.ndarray
    keep: np.ndarray  # (N,) bool over the input points
    coverage: torch.Tensor | None = None  # (1, H, W): 1 where the warp put image content


def shift_scale_rotate(image: torch.Tensor, uv: np.ndarray, rng: np.random.Generator,
                       p: float = GEOMETRIC_P) -> Augmented:
    """With probability ``p`` a random shift/scale/rotation of image and points; points that
    leave the image are dropped."""
    _, h, w = image.shape
    keep = np.ones(len(uv), bool)
    if rng.random() >= p:
        return Augmented(image, uv, keep)
    angle = rng.uniform(-ROTATE_LIMIT, ROTATE_LIMIT)
    scale = rng.uniform(1 - SCALE_LIMIT, 1 + SCALE_LIMIT)
    dx, dy = rng.uniform(-SHIFT_LIMIT, SHIFT_LIMIT, 2)
    matrix = affine_matrix(w, h, angle, scale, dx, dy)
    moved = uv @ matrix[:, :2].T + matrix[:, 2]
    keep = (moved[:, 0] >= 0) & (moved[:, 0] < w) & (moved[:, 1] >= 0) & (moved[:, 1] < h)
    coverage = warp(torch.ones_like(image[:1]), matrix, mode="nearest")
    return Augmented(warp(image, matrix), moved[keep], keep, coverage)


def colour_jitter(image: torch.Tensor, rng: np.random.Generator,
                  p: float = COLOUR_P) -> torch.Tensor:
    """Gaussian blur, Gaussian noise and brightness/contrast, each with probability ``p``
    (albumentations' defaults), on a ``(3, H, W)`` image in [0, 1]."""
    out = image
    if rng.random() < p and rng.integers(0, 2) == 1:  # kernel size drawn from {1, 3}
        g = torch.exp(-torch.tensor([-1.0, 0.0, 1.0]) ** 2 / (2 * BLUR_SIGMA ** 2))
        g = g / g.sum()
        kernel = (g[:, None] * g[None, :]).to(out)[None, None].repeat(3, 1, 1, 1)
        out = F.conv2d(F.pad(out[None], (1, 1, 1, 1), mode="reflect"), kernel, groups=3)[0]
    if rng.random() < p:
        std = math.sqrt(rng.uniform(*NOISE_VAR)) / 255.0
        noise = torch.from_numpy(rng.normal(0.0, std, tuple(out.shape))).to(out)
        out = (out + noise).clamp(0, 1)
    if rng.random() < p:
        alpha = 1.0 + rng.uniform(-CONTRAST, CONTRAST)
        beta = rng.uniform(-BRIGHTNESS, BRIGHTNESS)
        out = (out * alpha + beta).clamp(0, 1)
    return out


def augment_view(image: torch.Tensor, uv: np.ndarray, rng: np.random.Generator, *,
                 geometric_p: float = GEOMETRIC_P, colour_p: float = COLOUR_P) -> Augmented:
    """The authors' order: geometry first, then colour; pixels the warp left empty stay
    black."""
    geo = shift_scale_rotate(image, uv, rng, geometric_p)
    if not geo.keep.any():  # no point left: the pair is drawn again
        return geo
    jittered = colour_jitter(geo.image, rng, colour_p)
    if geo.coverage is not None:
        jittered = jittered * geo.coverage
    return Augmented(jittered, geo.uv, geo.keep, geo.coverage)
