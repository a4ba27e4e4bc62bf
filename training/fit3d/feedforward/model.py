"""The feed-forward lifter: posed context views of a scene -> pixel-aligned feature Gaussians
in one forward pass (the Large Spatial Model's step; MVSplat's cost volume for depth).

Two networks, so that the gradient separation of Stage 1 holds by construction:

- the **geometry net** reads RGB (and sensor depth, or a plane-sweep cost volume over the
  other context views) and predicts, per cell of ``stride`` x ``stride`` pixels, the depth
  along the cell's ray, a sub-cell offset, scale, rotation, opacity and a colour residual;
  it learns from the RGB loss only;
- the **feature net** reads RGB, the geometry net's trunk (detached) and the teacher's
  features of the context views, and predicts a D-dim feature per Gaussian (the teacher
  residual as LSM's ``feature_reduction``); with the decoder ``Conv2d(D, C, 3)`` (Stage 1's
  scene decoder, shared across scenes here) it learns from the feature loss only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fit3d_hub.render.sh import rgb_to_sh0
from fit3d_hub.render.torch_rasterizer import quat_to_rotmat

GEOMETRY_CHANNELS = 2 + 3 + 4 + 1 + 3
"""Per cell: sub-cell offset (2), scale (3), rotation (4), opacity (1), colour residual (3)."""
SCALE_MIN, SCALE_MAX = 0.5, 15.0
"""MVSplat's scale range, in tenths of a cell's footprint at the Gaussian's depth."""


@dataclass(frozen=True)
class LifterShape:
    """What fixes the lifter's tensors (saved beside its weights)."""

    teacher_dim: int
    feature_dim: int = 64
    width: int = 32
    stride: int = 2
    depth: str = "sensor"  # "sensor" | "predicted"
    depth_candidates: int = 32
    near: float = 0.5
    far: float = 20.0


@dataclass
class ContextViews:
    """N posed views of one scene, as the lifter reads them."""

    images: torch.Tensor  # (N, 3, H, W) in [0, 1]
    viewmats: torch.Tensor  # (N, 4, 4) OpenCV world-to-camera
    Ks: torch.Tensor  # (N, 3, 3)
    teacher: torch.Tensor  # (N, C, h, w) the teacher's features of these views
    depth: torch.Tensor | None = None  # (N, H, W) metres, 0 = unknown


@dataclass
class PixelGaussians:
    """Activated Gaussians, all context views' cells together (renderer inputs)."""

    means: torch.Tensor  # (G, 3) world
    quats: torch.Tensor  # (G, 4) w, x, y, z
    scales: torch.Tensor  # (G, 3)
    opacities: torch.Tensor  # (G,)
    colors: torch.Tensor  # (G, 1, 3) degree-0 SH
    features: torch.Tensor  # (G, D)
    depth: torch.Tensor  # (N, h, w) the depth each cell was placed at


def conv(cin: int, cout: int, stride: int = 1) -> nn.Module:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.GELU())


def rotmat_to_quat(rot: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) rotation matrices -> (..., 4) unit quaternions (w, x, y, z), Shepperd's
    branch-free form (the largest of the four candidates, sign fixed to w >= 0)."""
    m = rot
    diag = torch.stack([1 + m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2],
                        1 + m[..., 0, 0] - m[..., 1, 1] - m[..., 2, 2],
                        1 - m[..., 0, 0] + m[..., 1, 1] - m[..., 2, 2],
                        1 - m[..., 0, 0] - m[..., 1, 1] + m[..., 2, 2]], -1)
    cands = torch.stack([
        torch.stack([diag[..., 0], m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0],
                     m[..., 1, 0] - m[..., 0, 1]], -1),
        torch.stack([m[..., 2, 1] - m[..., 1, 2], diag[..., 1], m[..., 0, 1] + m[..., 1, 0],
                     m[..., 0, 2] + m[..., 2, 0]], -1),
        torch.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 0, 1] + m[..., 1, 0], diag[..., 2],
                     m[..., 1, 2] + m[..., 2, 1]], -1),
        torch.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0],
                     m[..., 1, 2] + m[..., 2, 1], diag[..., 3]], -1)], -2)
    best = diag.argmax(-1, keepdim=True)[..., None].expand(*diag.shape[:-1], 1, 4)
    q = F.normalize(cands.gather(-2, best).squeeze(-2), dim=-1)
    return torch.where(q[..., :1] < 0, -q, q)


def cell_rays(K: torch.Tensor, height: int, width: int, stride: int,
              offset: torch.Tensor | None = None) -> torch.Tensor:
    """(N, h, w, 3) camera-frame rays with z = 1 through each cell's point: its centre, or
    ``offset`` (N, 2, h, w) in (0, 1) across the cell (MVSplat's sub-pixel offset)."""
    h, w = height // stride, width // stride
    ys, xs = torch.meshgrid(torch.arange(h, device=K.device, dtype=K.dtype),
                            torch.arange(w, device=K.device, dtype=K.dtype), indexing="ij")
    if offset is None:
        u, v = (xs + 0.5) * stride, (ys + 0.5) * stride
        u, v = u.expand(len(K), h, w), v.expand(len(K), h, w)
    else:
        u, v = (xs + offset[:, 0]) * stride, (ys + offset[:, 1]) * stride
    fx, fy = K[:, 0, 0, None, None], K[:, 1, 1, None, None]
    cx, cy = K[:, 0, 2, None, None], K[:, 1, 2, None, None]
    return torch.stack([(u - cx) / fx, (v - cy) / fy, torch.ones_like(u)], -1)


def cell_depth(depth: torch.Tensor, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sensor depth (N, H, W) averaged over each cell's known pixels, and where it is known."""
    valid = (depth > 0).float()[:, None]
    total = F.avg_pool2d(depth[:, None] * valid, stride, stride)
    count = F.avg_pool2d(valid, stride, stride)
    known = count[:, 0] > 0
    return torch.where(known, total[:, 0] / count[:, 0].clamp_min(1e-6), 0.0), known


def plane_sweep(feats: torch.Tensor, viewmats: torch.Tensor, Ks: torch.Tensor, stride: int,
                candidates: torch.Tensor, partners: list[list[int]]) -> torch.Tensor:
    """MVSplat's cost volume: for each view and each candidate depth, the correlation
    (dot product / sqrt(channels)) of its cell features with its partners' features sampled
    where the cell's point at that depth projects; averaged over partners. (N, D, h, w)."""
    n, c, h, w = feats.shape
    rays = cell_rays(Ks, h * stride, w * stride, stride)  # (N, h, w, 3)
    c2w = torch.linalg.inv(viewmats)
    out = []
    for i in range(n):
        points = rays[i][None] * candidates[:, None, None, None]  # (D, h, w, 3) camera i
        world = points @ c2w[i, :3, :3].T + c2w[i, :3, 3]
        costs = []
        for j in partners[i]:
            cam = world @ viewmats[j, :3, :3].T + viewmats[j, :3, 3]
            z = cam[..., 2:].clamp_min(1e-4)
            u = (Ks[j, 0, 0] * cam[..., :1] / z + Ks[j, 0, 2]) / stride
            v = (Ks[j, 1, 1] * cam[..., 1:2] / z + Ks[j, 1, 2]) / stride
            grid = torch.cat([2 * u / w - 1, 2 * v / h - 1], -1)  # cell units -> [-1, 1]
            warped = F.grid_sample(feats[j:j + 1].expand(len(candidates), -1, -1, -1), grid,
                                   align_corners=False, padding_mode="zeros")
            costs.append((warped * feats[i:i + 1]).sum(1) / math.sqrt(c))  # (D, h, w)
        out.append(torch.stack(costs).mean(0))
    return torch.stack(out)


class FeedForwardLifter(nn.Module):
    """Context views -> :class:`PixelGaussians`; ``decoder`` maps rendered D-dim features to
    the teacher's width."""

    def __init__(self, shape: LifterShape):
        super().__init__()
        self.shape = shape
        w, s = shape.width, shape.stride
        depth_in = 1 if shape.depth == "sensor" else 0
        self.encoder = nn.Sequential(conv(3 + depth_in, w), conv(w, w, s), conv(w, w))
        if shape.depth == "predicted":
            self.cost_net = nn.Sequential(conv(shape.depth_candidates + w, w), conv(w, w),
                                          nn.Conv2d(w, shape.depth_candidates, 3, 1, 1))
        self.geometry_head = nn.Sequential(conv(w + 1, w), nn.Conv2d(w, GEOMETRY_CHANNELS, 1))
        self.feature_net = nn.Sequential(conv(3 + w, w, 1), conv(w, w),
                                         nn.Conv2d(w, shape.feature_dim, 1))
        self.teacher_reduction = nn.Conv2d(shape.teacher_dim, shape.feature_dim, 1)
        self.decoder = nn.Conv2d(shape.feature_dim, shape.teacher_dim, 3, padding=1, bias=False)

    def geometry_modules(self) -> list[nn.Module]:
        """The modules only the RGB loss trains."""
        mods = [self.encoder, self.geometry_head]
        return mods + ([self.cost_net] if self.shape.depth == "predicted" else [])

    def feature_modules(self) -> list[nn.Module]:
        """The modules only the feature loss trains."""
        return [self.feature_net, self.teacher_reduction, self.decoder]

    def candidates(self, device: torch.device) -> torch.Tensor:
        """Depth candidates, uniform in inverse depth between ``far`` and ``near`` (MVSplat)."""
        inv = torch.linspace(1 / self.shape.far, 1 / self.shape.near,
                             self.shape.depth_candidates, device=device)
        return 1 / inv

    def forward(self, views: ContextViews, partners: list[list[int]] | None = None
                ) -> PixelGaussians:
        """``partners[i]``: the context views view i's cost volume compares with (default: all
        others; only with predicted depth)."""
        shape, s = self.shape, self.shape.stride
        n, _, height, width = views.images.shape
        if height < s or width < s:
            raise ValueError(f"views of {width}x{height} are smaller than one {s}-pixel cell")
        images = views.images[..., :height // s * s, :width // s * s]
        if shape.depth == "sensor":
            if views.depth is None:
                raise ValueError("this lifter reads sensor depth; the views have none")
            depth_map = views.depth[..., :height // s * s, :width // s * s]
            depth, known = cell_depth(depth_map, s)
            inv = torch.where(depth_map > 0, 1 / depth_map.clamp_min(1e-3), 0.0)[:, None]
            trunk = self.encoder(torch.cat([images, inv], 1))
        else:
            trunk = self.encoder(images)
            cand = self.candidates(images.device)
            if partners is None:
                partners = [[j for j in range(n) if j != i] for i in range(n)]
            if min(len(p) for p in partners) < 1:
                raise ValueError("predicted depth needs at least 2 context views")
            cost = plane_sweep(trunk, views.viewmats, views.Ks, s, cand, partners)
            prob = self.cost_net(torch.cat([cost, trunk], 1)).softmax(1)
            depth = 1 / (prob * (1 / cand)[None, :, None, None]).sum(1)
            known = torch.ones_like(depth, dtype=torch.bool)
        raw = self.geometry_head(torch.cat([trunk, torch.log(depth.clamp_min(1e-3))[:, None]],
                                           1))
        offset, scale, rot, opacity, colour = raw.split([2, 3, 4, 1, 3], 1)
        rays = cell_rays(views.Ks, images.shape[-2], images.shape[-1], s, offset.sigmoid())
        cam_points = rays * depth[..., None]
        c2w = torch.linalg.inv(views.viewmats)
        means = torch.einsum("nij,nhwj->nhwi", c2w[:, :3, :3], cam_points) \
            + c2w[:, None, None, :3, 3]
        # MVSplat: (0.5 .. 15) x 0.1 x the cell's footprint at its depth
        footprint = depth * s / views.Ks[:, 0, 0, None, None]
        scales = (SCALE_MIN + (SCALE_MAX - SCALE_MIN) * scale.sigmoid()) * 0.1 \
            * footprint[:, None]
        q_cam = F.normalize(rot.permute(0, 2, 3, 1).reshape(n, -1, 4), dim=-1)
        r_world = c2w[:, None, :3, :3] @ quat_to_rotmat(q_cam.reshape(-1, 4)).reshape(n, -1,
                                                                                       3, 3)
        quats = rotmat_to_quat(r_world)
        alpha = opacity.sigmoid()[:, 0] * known
        mean_rgb = F.avg_pool2d(images, s, s)
        colors = rgb_to_sh0(mean_rgb) + colour  # LSM's RGB residual
        teacher = F.interpolate(views.teacher.float(), size=trunk.shape[-2:], mode="bilinear",
                                align_corners=False)
        features = self.feature_net(torch.cat([images_at(images, s), trunk.detach()], 1)) \
            + self.teacher_reduction(teacher)

        def flat(t: torch.Tensor) -> torch.Tensor:  # (N, C, h, w) -> (N h w, C)
            return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])

        return PixelGaussians(
            means=means.reshape(-1, 3), quats=quats.reshape(-1, 4),
            scales=flat(scales), opacities=alpha.reshape(-1), colors=flat(colors)[:, None],
            features=flat(features), depth=depth)


def images_at(images: torch.Tensor, stride: int) -> torch.Tensor:
    """Images averaged to the cell grid (the feature net's view of the colours)."""
    return F.avg_pool2d(images, stride, stride)
