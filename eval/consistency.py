"""Multi-view consistency of dense features: do pixels that see the same 3D point agree?

Pure functions. Correspondences come from depth and poses (back-project in view A, project
into view B, keep points that B's depth says are visible). A feature map covers its whole
image, so a pixel's feature is sampled bilinearly at its relative position.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from training.data.cameras import Camera


@dataclass(frozen=True)
class Correspondences:
    """Pixel positions (N, 2) in views A and B that see the same surface point."""

    uv_a: np.ndarray
    uv_b: np.ndarray


def correspondences(cam_a: Camera, depth_a: np.ndarray, cam_b: Camera, depth_b: np.ndarray,
                    *, stride: int = 2, tolerance: float = 0.03) -> Correspondences:
    """Ground-truth matches from A to B with an occlusion check against B's depth.

    ``tolerance`` is relative: a point is visible in B if B's depth there is within
    ``tolerance * z``.
    """
    h, w = depth_a.shape
    ys, xs = np.mgrid[0:h:stride, 0:w:stride]
    ys, xs = ys.ravel(), xs.ravel()
    z_a = depth_a[ys, xs]
    valid = z_a > 0
    uv_a = np.stack([xs + 0.5, ys + 0.5], -1)[valid].astype(np.float64)
    world = cam_a.unproject(uv_a, z_a[valid])
    uv_b, z_b = cam_b.project(world)
    cols, rows = np.floor(uv_b[:, 0]).astype(int), np.floor(uv_b[:, 1]).astype(int)
    inside = (z_b > 0) & (cols >= 0) & (cols < depth_b.shape[1]) & (rows >= 0) \
        & (rows < depth_b.shape[0])
    seen = np.zeros_like(inside)
    seen[inside] = np.abs(depth_b[rows[inside], cols[inside]] - z_b[inside]) \
        < tolerance * z_b[inside]
    return Correspondences(uv_a[seen], uv_b[seen])


def sample_features(features: torch.Tensor, uv: np.ndarray, width: int, height: int
                    ) -> torch.Tensor:
    """L2-normalised features (N, C) of a (C, h, w) map at pixel positions of a W x H image."""
    grid = torch.tensor(np.stack([uv[:, 0] / width * 2 - 1, uv[:, 1] / height * 2 - 1], -1),
                        dtype=features.dtype, device=features.device)
    sampled = F.grid_sample(features[None], grid[None, :, None], mode="bilinear",
                            align_corners=False)[0, :, :, 0].T
    return F.normalize(sampled, dim=-1)


def consistency(features_a: torch.Tensor, features_b: torch.Tensor, matches: Correspondences,
                width: int, height: int, *, seed: int = 0) -> dict[str, float]:
    """Cosine distance of corresponding features, relative to non-corresponding ones.

    ``ratio`` = mean distance of true matches / mean distance of random pairs (both
    visible); lower is more consistent, and features that collapse to one vector do not
    score well (their random pairs are as close as their matches).
    """
    if len(matches.uv_a) < 2:
        raise ValueError("fewer than two correspondences between the views")
    fa = sample_features(features_a.float(), matches.uv_a, width, height)
    fb = sample_features(features_b.float(), matches.uv_b, width, height)
    matched = (1 - (fa * fb).sum(-1)).mean()
    perm = torch.randperm(len(fb), generator=torch.Generator().manual_seed(seed))
    shuffled = (1 - (fa * fb[perm]).sum(-1)).mean()
    return {"matched": float(matched), "random": float(shuffled),
            "ratio": float(matched / shuffled.clamp_min(1e-8)), "pairs": float(len(fa))}
