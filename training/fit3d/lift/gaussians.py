"""3D feature Gaussians of one scene: 3DGS parameters, a D-dim feature each, and a decoder."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from fit3d_hub.render.sh import num_sh_bases, rgb_to_sh0
from scenes.types import Scene
from training.fit3d.lift.config import LearningRates

GEOMETRY = ("means", "quats", "scales", "opacities")
APPEARANCE = ("sh0", "shN")


def scene_scale(scene: Scene) -> float:
    """3DGS's scene extent: 1.1 x the largest camera distance from the cameras' centroid."""
    centres = np.stack([f.camera.center for f in scene.frames])
    radius = np.linalg.norm(centres - centres.mean(0), axis=1).max()
    return float(1.1 * max(radius, 1e-3))


def random_points_in_frusta(scene: Scene, count: int, rng: np.random.Generator
                            ) -> np.ndarray:
    """Points spread through the cameras' view frusta, up to ~2 scene extents deep."""
    extent = scene_scale(scene)
    picks = rng.integers(0, len(scene.frames), count)
    out = np.empty((count, 3))
    for i, frame in enumerate(scene.frames):
        sel = picks == i
        if not sel.any():
            continue
        cam = frame.camera
        uv = rng.uniform([0, 0], [cam.width, cam.height], (sel.sum(), 2))
        depth = rng.uniform(0.05 * extent, 2.0 * extent, sel.sum())
        out[sel] = cam.unproject(uv, depth)
    return out


def knn_scale(points: torch.Tensor, k: int = 3, chunk: int = 4096) -> torch.Tensor:
    """RMS distance to the ``k`` nearest neighbours (3DGS's initial Gaussian size)."""
    out = torch.empty(len(points), dtype=points.dtype)
    for start in range(0, len(points), chunk):
        d = torch.cdist(points[start:start + chunk], points)
        d2 = d.topk(min(k + 1, len(points)), largest=False).values[:, 1:] ** 2
        out[start:start + chunk] = d2.mean(1).sqrt() if d2.numel() else 0.01
    return out.clamp_min(1e-7)


class FeatureGaussians(nn.Module):
    """Means, quats, log-scales, logit-opacities, SH colour and a feature per Gaussian, plus the
    scene decoder ``Conv2d(D, C, 3, padding=1, bias=False)`` to the backbone's width."""

    def __init__(self, params: dict[str, torch.Tensor], teacher_dim: int):
        super().__init__()
        self.splats = nn.ParameterDict({k: nn.Parameter(v) for k, v in params.items()})
        dim = params["features"].shape[1]
        self.decoder = nn.Conv2d(dim, teacher_dim, 3, padding=1, bias=False)

    @classmethod
    def initialise(cls, scene: Scene, *, feature_dim: int, teacher_dim: int, sh_degree: int,
                   max_points: int | None = None, random_points: int = 20_000,
                   seed: int = 0) -> FeatureGaussians:
        """From the scene's points (all, or a random ``max_points`` of them) or random
        frustum points; features start at zero, as the authors initialise them."""
        rng = np.random.default_rng(seed)
        if scene.points is not None and len(scene.points):
            points, colors = scene.points, scene.point_colors
            if max_points is not None and len(points) > max_points:
                keep = rng.permutation(len(points))[:max_points]
                points, colors = points[keep], colors[keep]
        else:
            points = random_points_in_frusta(scene, random_points, rng)
            colors = rng.uniform(0, 1, points.shape)
        means = torch.tensor(points, dtype=torch.float32)
        n = len(means)
        shn = torch.zeros(n, num_sh_bases(sh_degree) - 1, 3)
        params = {
            "means": means,
            "quats": torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(n, 1),
            "scales": torch.log(knn_scale(means))[:, None].repeat(1, 3),
            "opacities": torch.full((n,), math.log(0.1 / 0.9)),
            "sh0": rgb_to_sh0(torch.tensor(colors, dtype=torch.float32))[:, None, :],
            "shN": shn,
            "features": torch.zeros(n, feature_dim),
        }
        return cls(params, teacher_dim)

    @property
    def num_gaussians(self) -> int:
        return int(self.splats["means"].shape[0])

    def activated(self) -> dict[str, torch.Tensor]:
        """Renderer inputs for the geometry: activated scales and opacities."""
        return {
            "means": self.splats["means"],
            "quats": self.splats["quats"],
            "scales": torch.exp(self.splats["scales"]),
            "opacities": torch.sigmoid(self.splats["opacities"]),
        }

    def sh_coeffs(self) -> torch.Tensor:
        return torch.cat([self.splats["sh0"], self.splats["shN"]], dim=1)

    def optimizers(self, lr: LearningRates, scale: float) -> tuple[dict, torch.optim.Optimizer]:
        """One Adam per splat parameter (the layout gsplat's strategies edit) + the decoder's."""
        rates = {"means": lr.means * scale, "quats": lr.quats, "scales": lr.scales,
                 "opacities": lr.opacities, "sh0": lr.sh0, "shN": lr.shN,
                 "features": lr.features}
        opts = {name: torch.optim.Adam([{"params": self.splats[name], "lr": rates[name],
                                         "name": name}], eps=1e-15)
                for name in self.splats}
        return opts, torch.optim.Adam(self.decoder.parameters(), lr=lr.decoder, eps=1e-15)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Everything Stage 2 needs, as plain tensors (safetensors names)."""
        out = {k: v.detach() for k, v in self.splats.items()}
        out["decoder.weight"] = self.decoder.weight.detach()
        return out

    @classmethod
    def from_state_tensors(cls, tensors: dict[str, torch.Tensor]) -> FeatureGaussians:
        params = {k: v.clone() for k, v in tensors.items() if k != "decoder.weight"}
        weight = tensors["decoder.weight"]
        model = cls(params, weight.shape[0])
        with torch.no_grad():
            model.decoder.weight.copy_(weight)
        return model
