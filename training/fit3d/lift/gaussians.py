"""3D feature Gaussians of one scene: 3DGS parameters, a D-dim feature each, and a decoder."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from fit3d_hub.budget import check_bytes
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


BRUTE_FORCE_POINTS = 20_000
"""Up to this many points the k nearest neighbours come from all pairwise distances; above,
from a grid (the pairwise way is quadratic: hours for a million points)."""


def knn_scale(points: torch.Tensor, k: int = 3, chunk: int = 4096) -> torch.Tensor:
    """RMS distance to the ``k`` nearest neighbours (3DGS's initial Gaussian size)."""
    if len(points) <= BRUTE_FORCE_POINTS:
        out = torch.empty(len(points), dtype=points.dtype)
        for start in range(0, len(points), chunk):
            d = torch.cdist(points[start:start + chunk], points)
            d2 = d.topk(min(k + 1, len(points)), largest=False).values[:, 1:] ** 2
            out[start:start + chunk] = d2.mean(1).sqrt() if d2.numel() else 0.01
        return out.clamp_min(1e-7)
    return knn_sq_distances(points, k).mean(1).sqrt().clamp_min(1e-7)


def knn_sq_distances(points: torch.Tensor, k: int, budget: int = 1 << 24) -> torch.Tensor:
    """Squared distances ``(N, k)`` from each point to its ``k`` nearest other points, exact,
    in about linear time: points are binned into a grid (cells holding a few points each);
    each point's candidates are the points of its own and the 26 neighbouring cells, which
    hold every point closer than one cell side; where the k-th candidate is farther than
    that, the point is searched again on a grid of twice the side (at last among all
    points). ``budget`` bounds the candidate distances held at once."""
    n = len(points)
    out = torch.full((n, k), float("inf"), dtype=points.dtype)
    lo = points.min(0).values
    extent = float((points.max(0).values - lo).max().clamp_min(1e-12))
    side = extent / max(1.0, n ** (1 / 3))  # about one point per cell if they filled the box
    for _ in range(20):  # surfaces fill few cells: shrink until occupied cells hold ~4
        if n <= 4 * len(torch.unique(_cell_keys(points, lo, side)[0])):
            break
        side /= 2
    todo = torch.arange(n)
    while len(todo) and side < 2 * extent:
        found, exact = _grid_knn(points, todo, k, side, lo, budget)
        out[todo[exact]] = found[exact]
        todo, side = todo[~exact], side * 2
    for start in range(0, len(todo), 64):  # what no grid settled: against every point
        rows = todo[start:start + 64]
        d2 = torch.cdist(points[rows], points,
                         compute_mode="donot_use_mm_for_euclid_dist").square()
        d2[torch.arange(len(rows)), rows] = float("inf")
        out[rows] = d2.topk(k, largest=False).values
    return out


def _cell_keys(points: torch.Tensor, lo: torch.Tensor, side: float
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each point's cell as one integer key, and the key strides of the three axes (cells
    are shifted by one so that every neighbour of an occupied cell has a key)."""
    cells = ((points - lo) / side).floor().long() + 1
    dims = cells.max(0).values + 2
    strides = torch.stack([dims[1] * dims[2], dims[2], torch.ones_like(dims[2])])
    return (cells * strides).sum(1), strides


def _grid_knn(points: torch.Tensor, queries: torch.Tensor, k: int, side: float,
              lo: torch.Tensor, budget: int) -> tuple[torch.Tensor, torch.Tensor]:
    """k nearest squared distances of ``queries`` among the points of the 27 cells around
    each, and whether each result is exact (its k-th within one cell side)."""
    key, strides = _cell_keys(points, lo, side)
    order = key.argsort()
    sorted_key = key[order]
    steps = torch.tensor([-1, 0, 1])
    offsets = torch.cartesian_prod(steps, steps, steps) @ strides
    wanted = key[queries][:, None] + offsets  # (Q, 27) neighbouring cells
    first = torch.searchsorted(sorted_key, wanted)
    lengths = torch.searchsorted(sorted_key, wanted, right=True) - first
    count = lengths.sum(1)
    result = torch.full((len(queries), k), float("inf"), dtype=points.dtype)
    by_count = count.argsort()  # chunks of alike counts: a dense (rows, most) matrix each
    i = 0
    while i < len(by_count):
        size = max(1, budget // max(1, int(count[by_count[i]])))
        while size > 1 and size * int(count[by_count[min(i + size, len(by_count)) - 1]]) > budget:
            size //= 2
        rows = by_count[i:i + size]
        i += size
        lens, starts = lengths[rows].flatten(), first[rows].flatten()
        owner = torch.arange(len(rows)).repeat_interleave(27).repeat_interleave(lens)
        offset_in_range = torch.arange(int(lens.sum())) - (lens.cumsum(0) - lens) \
            .repeat_interleave(lens)
        candidate = order[starts.repeat_interleave(lens) + offset_in_range]
        me = queries[rows][owner]
        d2 = (points[candidate] - points[me]).square().sum(1)
        d2[candidate == me] = float("inf")
        per_row = count[rows]
        column = torch.arange(len(owner)) - (per_row.cumsum(0) - per_row)[owner]
        dense = torch.full((len(rows), max(k, int(per_row.max()))), float("inf"),
                           dtype=points.dtype)
        dense[owner, column] = d2
        result[rows] = dense.topk(k, largest=False).values
    return result, result[:, -1] <= side * side


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
        n = len(points)
        # parameters, gradients and two Adam moments of every Gaussian, before allocating
        floats = 3 + 4 + 3 + 1 + 3 * num_sh_bases(sh_degree) + feature_dim
        check_bytes(4 * 4 * floats * n, f"{scene.root}: {n} initial points",
                    "Stage 1's Gaussians (use --max-points)")
        means = torch.tensor(points, dtype=torch.float32)
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
