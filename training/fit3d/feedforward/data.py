"""Scenes as the feed-forward lifter reads them: every view's image, camera, sensor depth and
teacher features, held in memory, and the context/target sampling of one training sample."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fit3d_hub import FiT3D
from scenes.holdout import training_views
from scenes.io import load_depth
from scenes.load import load_scene
from scenes.types import SceneError
from scenes.views import load_views
from training.fit3d.feedforward.model import ContextViews
from training.fit3d.lift.teacher import compute_teacher_features


@dataclass
class PooledScene:
    """One scene's views at lifting size (RGB in [0, 1]) with its teacher cache."""

    name: str
    path: Path
    splits: list[str]
    images: torch.Tensor  # (V, 3, H, W) float32
    viewmats: torch.Tensor  # (V, 4, 4)
    Ks: torch.Tensor  # (V, 3, 3)
    teacher: torch.Tensor  # (V, C, h, w) float16
    depth: torch.Tensor | None  # (V, H, W) metres, 0 = unknown
    trainable: list[int]
    """The views training may use (the held-out rule applied)."""

    @property
    def size(self) -> tuple[int, int]:
        return int(self.images.shape[-1]), int(self.images.shape[-2])

    @property
    def centres(self) -> np.ndarray:
        """(V, 3) camera centres in world coordinates."""
        c2w = torch.linalg.inv(self.viewmats.double())
        return c2w[:, :3, 3].numpy()

    def context(self, views: list[int], device: torch.device | str = "cpu") -> ContextViews:
        """The lifter's input for ``views``."""
        return ContextViews(
            images=self.images[views].to(device), viewmats=self.viewmats[views].to(device),
            Ks=self.Ks[views].to(device), teacher=self.teacher[views].to(device),
            depth=None if self.depth is None else self.depth[views].to(device))


def load_pooled_scene(path: Path, teacher: FiT3D, *, downscale: float, holdout_every: int,
                      needs_depth: bool, device: torch.device | str = "cpu") -> PooledScene:
    """Read ``path`` once; non-finite cameras or depth, and missing depth where the lifter
    reads it, are one line naming the scene and view."""
    scene = load_scene(path)
    for frame in scene.frames:
        cam = frame.camera
        values = np.array([cam.fx, cam.fy, cam.cx, cam.cy, *np.ravel(cam.w2c)], np.float64)
        if not np.isfinite(values).all():
            raise SceneError(f"{scene.root}: view {frame.name!r} has a non-finite camera "
                             "(intrinsics or pose)")
        if not (cam.fx > 0 and cam.fy > 0):
            raise SceneError(f"{scene.root}: view {frame.name!r} has focal lengths "
                             f"{cam.fx}, {cam.fy}; expected positive")
    views = load_views(scene, downscale)
    depth = None
    if needs_depth:
        missing = [f.name for f in scene.frames if f.depth_path is None]
        if missing:
            raise SceneError(f"{scene.root}: view {missing[0]!r} has no depth map; this lifter "
                             "reads sensor depth (train one with --depth predicted for scenes "
                             "without)")
        maps = []
        for frame in scene.frames:
            d = load_depth(frame.depth_path, frame.depth_scale, views.size)
            if not np.isfinite(d).all():
                raise SceneError(f"{frame.depth_path}: depth of view {frame.name!r} has "
                                 "non-finite values")
            maps.append(d)
        depth = torch.from_numpy(np.stack(maps))
    feats = compute_teacher_features(teacher, views.images, device=device)
    return PooledScene(
        name=scene.name, path=Path(path), splits=views.splits,
        images=views.images.permute(0, 3, 1, 2).float() / 255.0, viewmats=views.viewmats,
        Ks=views.Ks, teacher=feats, depth=depth,
        trainable=training_views(views.splits, holdout_every))


def sample_views(scene: PooledScene, rng: np.random.Generator, context: int, target: int
                 ) -> tuple[list[int], list[int]]:
    """One training sample's views: around a random anchor, the ``context + 2 target``
    trainable views nearest to it by camera centre; ``context`` of them as context, then
    ``target`` of the rest as targets (nearby views, as LSM's and MVSplat's frame gaps)."""
    pool = scene.trainable
    centres = scene.centres[pool]
    anchor = int(rng.integers(len(pool)))
    near = np.argsort(np.linalg.norm(centres - centres[anchor], axis=1), kind="stable")
    window = [pool[i] for i in near[:context + 2 * target]]
    picked = rng.permutation(len(window))
    return ([window[i] for i in picked[:context]],
            [window[i] for i in picked[context:context + target]])


def check_enough_views(scene: PooledScene, context: int, target: int) -> None:
    if len(scene.trainable) < context + target:
        raise SceneError(f"{scene.path}: {len(scene.trainable)} trainable views; the lifter "
                         f"needs {context} context + {target} target views")


def nearest_partners(centres: np.ndarray, count: int) -> list[list[int]]:
    """For each view, the ``count`` other views nearest by camera centre (the cost volume's
    partners when a scene has more context views than training used)."""
    dist = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
    np.fill_diagonal(dist, np.inf)
    count = min(count, len(centres) - 1)
    return [[int(j) for j in np.argsort(row, kind="stable")[:count]] for row in dist]
