"""The equivariance fine-tuning loop (LoRA + refine conv, smooth-AP on 3D correspondences),
with Accelerate: DDP, mixed precision, resumable safe checkpoints, NaN stop."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fit3d_hub.sampling import sample_features
from fit3d_hub.transforms import preprocess_images
from scenes.types import SceneError
from training.common.loop import BackboneRun
from training.equivariance.augment import Augmented, augment_view
from training.equivariance.config import EquivarianceConfig
from training.equivariance.loss import smooth_ap_loss
from training.equivariance.network import network_input_size
from training.equivariance.pairs import TrainingScene, point_distances, sample_points

MAX_DRAWS = 100
"""Pairs drawn in a row without a positive correspondence before the data is called bad."""


MAY_CHANGE = ("steps", "save_every", "keep_checkpoints")
"""Settings a resumed run may change; every other one, the backbone, the scene set, mixed
precision and the process count must match the checkpoint's."""


@dataclass
class PairSample:
    """Two preprocessed views of one scene, their points and the 3D distances between them."""

    images: torch.Tensor  # (2, 3, H_in, W_in) normalised network input
    uv: tuple[np.ndarray, np.ndarray]  # points in each view's image (pixel centres)
    size: tuple[int, int]  # (width, height) of the view images
    distances: torch.Tensor  # (S, T) in units of the scene's extent
    scene: str
    views: tuple[str, str]


def draw_pair(scenes: list[TrainingScene], config: EquivarianceConfig,
              rng: np.random.Generator, *, mean, std, patch: int) -> PairSample:
    """A random scene, a random pair of its views and their points (augmented), redrawn
    while the pair has no positive; :class:`SceneError` after ``MAX_DRAWS`` misses."""
    for _ in range(MAX_DRAWS):
        scene = scenes[int(rng.integers(len(scenes)))]
        a, b = scene.pairs[int(rng.integers(len(scene.pairs)))]
        views: list[Augmented] = []
        xyz = []
        for v in (a, b):
            points = sample_points(scene.cameras[v], scene.depths[v], scene.masks[v],
                                   config.points, rng)
            image = torch.from_numpy(scene.images[v]).permute(2, 0, 1)
            view = (augment_view(image, points.uv, rng) if config.augment
                    else Augmented(image, points.uv, np.ones(len(points.uv), bool)))
            views.append(view)
            xyz.append(points.xyz[view.keep])
        distances = point_distances(xyz[0], xyz[1], scene.extent)
        if distances.numel() and bool((distances < config.positive).any()):
            break
    else:
        raise SceneError(
            f"{MAX_DRAWS} view pairs drawn in a row share no 3D point closer than "
            f"{config.positive:g} x the scene extent (last: scene {scene.name}, views "
            f"{scene.frames[a]} and {scene.frames[b]}); expected overlapping views whose depth "
            "and poses agree")
    h, w = views[0].image.shape[-2:]
    shapes = {tuple(v.image.shape) for v in views}
    if len(shapes) > 1:
        raise SceneError(f"scene {scene.name}: views {scene.frames[a]} and {scene.frames[b]} "
                         f"differ in size {sorted(shapes)}; expected one image size per scene")
    size = network_input_size(h, w, patch, config.target_size, config.feature_stride)
    images = preprocess_images(torch.stack([v.image for v in views]), mean, std, patch, size)
    return PairSample(images, (views[0].uv, views[1].uv), (w, h), distances, scene.name,
                      (scene.frames[a], scene.frames[b]))


def pair_loss(maps: torch.Tensor, sample: PairSample, config: EquivarianceConfig
              ) -> torch.Tensor:
    """Smooth-AP of the two views' point features (bilinear at token centres, normalised)."""
    w, h = sample.size
    desc = [sample_features(maps[i].float(), sample.uv[i], w, h) for i in (0, 1)]
    return smooth_ap_loss(desc[0], desc[1], sample.distances.to(maps.device),
                          positive=config.positive, negative=config.negative,
                          temperature=config.temperature)


def step_rng(seed: int, step: int, process: int) -> np.random.Generator:
    """The generator of one step on one process: a resumed run draws what the uninterrupted
    one would have."""
    return np.random.default_rng([seed, step, process])


def train(accelerator, net: nn.Module, scenes: list[TrainingScene], config: EquivarianceConfig,
          *, mean, std, patch: int, checkpoint_dir: Path, resume: bool,
          settings: dict | None = None, on_step: Callable[[dict], None] | None = None) -> dict:
    """Train ``net`` (its trainable parameters: LoRA and refine conv) in place; returns a
    summary. Only the main process writes files."""
    settings = {**config.to_json(), "processes": accelerator.num_processes,
                **(settings or {})}
    torch.manual_seed(config.seed)
    trainable = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    run = BackboneRun.start(accelerator, net, optimizer, directory=checkpoint_dir,
                            settings=settings, may_change=MAY_CHANGE,
                            keep=config.keep_checkpoints, save_every=config.save_every,
                            resume=resume)
    model, optimizer, state = run.model, run.optimizer, run.state
    device = accelerator.device
    model.train()
    start, done, last_loss = time.perf_counter(), 0, math.nan
    while state.step < config.steps:
        rng = step_rng(config.seed, state.step, accelerator.process_index)
        sample = draw_pair(scenes, config, rng, mean=mean, std=std, patch=patch)
        maps = model(sample.images.to(device))
        loss = pair_loss(maps, sample, config)
        run.stop_on_nonfinite_loss(
            loss, f" (scene {sample.scene}, views {' and '.join(sample.views)})")
        accelerator.backward(loss)
        if config.grad_clip > 0:
            accelerator.clip_grad_norm_(trainable, config.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        state.micro += 1
        done += 1
        last_loss = float(loss.detach())
        if on_step is not None:
            on_step({"step": state.step, "loss": last_loss,
                     "pairs_per_s": done * accelerator.num_processes
                     / (time.perf_counter() - start)})
        run.step_done()
    run.finish()
    return {"steps": state.step, "final_loss": last_loss,
            "seconds": time.perf_counter() - start}
