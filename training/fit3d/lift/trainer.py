"""Fitting one scene's feature Gaussians: the Stage 1 loop, composed of importable pieces."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fit3d_hub.checkpoint import (
    Checkpointer,
    DataclassState,
    DictState,
    NumpyRNGState,
    OptimizerState,
    TorchRNGState,
    tensors_finite,
)
from fit3d_hub.errors import TrainingStopped
from fit3d_hub.render.backends import NEAR_PLANE, backend
from fit3d_hub.render.strategy import OpacityResetStrategy
from scenes.holdout import training_views
from scenes.types import Scene
from scenes.views import SceneImages
from training.common.loop import stop_on_nonfinite_loss
from training.fit3d.lift.config import LiftConfig
from training.fit3d.lift.gaussians import FeatureGaussians, scene_scale
from training.fit3d.lift.losses import feature_loss, fill_masked, psnr, rgb_loss
from training.fit3d.lift.teacher import upsample_teacher

LOG_EVERY = 10  # steps between progress records (each costs a device sync and a PSNR)
HISTORY_EVERY = 50  # a multiple of LOG_EVERY


class LiftError(TrainingStopped):
    """A scene that cannot be lifted (NaN loss, degenerate data); the run goes on without it."""


@dataclass
class LoopState:
    """The loop's own progress (what is not a tensor of the model or the optimizers)."""

    step: int = 0  # the next step to run
    queue: list[int] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)
    elapsed: float = 0.0
    resets_done: int = 0


class GaussiansState:
    """The Gaussians and decoder as a checkpoint part; loading builds new ones (their count
    changes with densification), on ``device``."""

    finite = True

    def __init__(self, gaussians: FeatureGaussians | None, device: torch.device):
        self.gaussians, self.device = gaussians, device

    def state(self) -> tuple[dict[str, torch.Tensor], Any]:
        return self.gaussians.state_tensors(), None

    def load(self, tensors: Mapping[str, torch.Tensor], saved: Any) -> None:
        self.gaussians = FeatureGaussians.from_state_tensors(dict(tensors)).to(self.device)


@dataclass
class SceneViews:
    """A scene's training data on the training device: images, masks, cameras, teacher."""

    images: torch.Tensor  # (V, H, W, 3) float32
    masks: torch.Tensor | None  # (V, H, W, 1) bool
    viewmats: torch.Tensor  # (V, 4, 4)
    Ks: torch.Tensor  # (V, 3, 3)
    teacher: torch.Tensor  # (V, C, h, w) float16
    width: int
    height: int

    @classmethod
    def from_images(cls, views: SceneImages, teacher: torch.Tensor, device: torch.device
                    ) -> SceneViews:
        """The training copy of a scene's views (RGB in [0, 1]) with its teacher cache."""
        masks = None if views.masks is None else views.masks[..., None].to(device)
        return cls(images=(views.images.float() / 255.0).to(device), masks=masks,
                   viewmats=views.viewmats.to(device), Ks=views.Ks.to(device), teacher=teacher,
                   width=views.size[0], height=views.size[1])


@dataclass
class LiftResult:
    gaussians: FeatureGaussians
    metrics: dict[str, float]
    history: list[dict[str, float]]


def render_views(gaussians: FeatureGaussians, views: SceneViews, index: int,
                 backend_name: str, sh_degree: int) -> dict:
    """RGB (geometry trainable) and decoded features (geometry detached) of one view."""
    cam = slice(index, index + 1)
    geo = gaussians.activated()
    rgb, alpha, feats, info = backend(backend_name).rasterization_with_features(
        geo["means"], geo["quats"], geo["scales"], geo["opacities"], gaussians.sh_coeffs(),
        gaussians.splats["features"], views.viewmats[cam], views.Ks[cam], views.width,
        views.height, sh_degree=sh_degree, near_plane=NEAR_PLANE, packed=False)
    decoded = gaussians.decoder(feats.permute(0, 3, 1, 2))
    return {"rgb": rgb.permute(0, 3, 1, 2), "alpha": alpha, "features": feats,
            "decoded": decoded, "info": info}


def step_losses(out: dict, views: SceneViews, index: int, config: LiftConfig
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(RGB loss, feature loss) of one rendered view; masked pixels are filled with the
    render, as the authors do."""
    target = views.images[index:index + 1].permute(0, 3, 1, 2)
    mask = None if views.masks is None else views.masks[index:index + 1].permute(0, 3, 1, 2)
    teacher = upsample_teacher(views.teacher[index:index + 1].to(target.device),
                               views.height, views.width)
    l_rgb = rgb_loss(out["rgb"], fill_masked(target, out["rgb"], mask), config.ssim_weight)
    l_feat = feature_loss(out["decoded"], fill_masked(teacher, out["decoded"], mask))
    return l_rgb, l_feat


def scene_training_views(scene: Scene, config: LiftConfig) -> list[int]:
    """The views Stage 1 fits (recorded in the lifted file; Stage 2 trains on the same)."""
    return training_views([f.split for f in scene.frames], config.holdout_every,
                          config.hold_out_test_frames)


def lift_scene(scene: Scene, views: SceneViews, config: LiftConfig, *, backend: str,
               device: torch.device, on_step: Callable[[int, dict], None] | None = None,
               checkpoints: Checkpointer | None = None, checkpoint_every: int = 0
               ) -> LiftResult:
    """Optimise the scene's feature Gaussians for ``config.iterations`` steps.

    ``on_step(step, record)`` is called every ``LOG_EVERY`` steps and after the last one.
    With ``checkpoints`` the loop saves its whole state every ``checkpoint_every`` steps and,
    if a checkpoint is there already, continues from it (its settings must match:
    :class:`~fit3d_hub.errors.SettingsChangedError` otherwise). Raises :class:`LiftError`
    when the scene cannot be lifted.
    """
    try:
        return _lift(scene, views, config, backend=backend, device=device, on_step=on_step,
                     checkpoints=checkpoints, checkpoint_every=checkpoint_every)
    except TrainingStopped as err:
        if isinstance(err, LiftError):
            raise
        raise LiftError(f"{scene.root}: {err}") from None


def _lift(scene: Scene, views: SceneViews, config: LiftConfig, *, backend: str,
          device: torch.device, on_step: Callable[[int, dict], None] | None,
          checkpoints: Checkpointer | None, checkpoint_every: int) -> LiftResult:
    torch.manual_seed(config.seed)
    extent = scene_scale(scene)
    strategy = OpacityResetStrategy(
        refine_start_iter=config.refine_start_iter, refine_stop_iter=config.refine_stop_iter,
        refine_every=config.refine_every, reset_every=config.reset_every,
        grow_grad2d=config.grow_grad2d)
    rng = np.random.default_rng(config.seed)
    loop = LoopState()
    saved = checkpoints.open() if checkpoints is not None else None
    held = GaussiansState(None, device)
    if saved is not None:
        saved.load("gaussians", held)
        gaussians = held.gaussians
        optimizers, decoder_opt = gaussians.optimizers(config.lr, extent)
        state: dict[str, Any] = {}
    else:
        gaussians = FeatureGaussians.initialise(
            scene, feature_dim=config.feature_dim, teacher_dim=views.teacher.shape[1],
            sh_degree=config.sh_degree, max_points=config.max_points,
            random_points=config.random_points, seed=config.seed).to(device)
        optimizers, decoder_opt = gaussians.optimizers(config.lr, extent)
        state = strategy.initialize_state(scene_scale=extent)
    held.gaussians = gaussians
    parts = {"gaussians": held,
             **{f"optimizer.{name}": OptimizerState(opt)
                for name, opt in {**optimizers, "decoder": decoder_opt}.items()},
             "strategy": DictState(state, device), "rng": TorchRNGState(),
             "numpy_rng": NumpyRNGState(rng), "loop": DataclassState(loop)}
    if saved is not None:
        for name, part in parts.items():
            if name != "gaussians":
                saved.load(name, part)
        strategy.resets_done = loop.resets_done
    strategy.check_sanity(gaussians.splats, optimizers)
    decay = (config.lr.means_final / config.lr.means) ** (1.0 / max(config.iterations, 1))
    order = scene_training_views(scene, config)
    start = time.perf_counter() - loop.elapsed
    for step in range(loop.step, config.iterations):
        if not loop.queue:
            loop.queue = [int(v) for v in rng.permutation(order)]
        index = int(loop.queue.pop())
        # the authors raise the degree at their 1-based iteration k * interval
        degree = min((step + 1) // config.sh_degree_interval, config.sh_degree)
        out = render_views(gaussians, views, index, backend, degree)
        strategy.step_pre_backward(gaussians.splats, optimizers, state, step, out["info"])
        l_rgb, l_feat = step_losses(out, views, index, config)
        loss = l_rgb + config.feature_weight * l_feat
        stop_on_nonfinite_loss(
            loss, step, where=lambda rgb=l_rgb, feat=l_feat:
            f" (rgb {float(rgb.detach()):.4g}, feature {float(feat.detach()):.4g})")
        loss.backward()
        # densify, prune and reset before the optimiser step, as the authors' loop does
        # (tensors the strategy replaces skip this step's update)
        strategy.step_post_backward(gaussians.splats, optimizers, state, step, out["info"])
        for opt in (*optimizers.values(), decoder_opt):
            opt.step()
            opt.zero_grad(set_to_none=True)
        for group in optimizers["means"].param_groups:
            group["lr"] *= decay
        last = step == config.iterations - 1
        if step % LOG_EVERY == 0 or last:
            with torch.no_grad():
                target = views.images[index:index + 1].permute(0, 3, 1, 2)
                record = {"step": step, "loss": float(loss), "rgb_loss": float(l_rgb),
                          "feature_l1": float(l_feat), "psnr": psnr(out["rgb"], target),
                          "gaussians": gaussians.num_gaussians}
            if step % HISTORY_EVERY == 0 or last:
                loop.history.append(record)
            if on_step is not None:
                on_step(step, record)
        if checkpoints is not None and checkpoint_every > 0 and not last \
                and (step + 1) % checkpoint_every == 0:
            loop.step, loop.elapsed = step + 1, time.perf_counter() - start
            loop.resets_done = strategy.resets_done
            checkpoints.save(step + 1, parts)
    elapsed = time.perf_counter() - start
    if not tensors_finite(gaussians.state_tensors().values()):
        raise LiftError(f"{scene.root}: the Gaussians became non-finite by the last step; "
                        "the scene is not written")
    metrics = evaluate(gaussians, views, backend, config, range(len(scene.frames)))
    metrics.update(seconds=elapsed, iterations_per_second=config.iterations / max(elapsed, 1e-9),
                   gaussians=gaussians.num_gaussians, opacity_resets=strategy.resets_done)
    return LiftResult(gaussians, metrics, loop.history)


@torch.no_grad()
def evaluate(gaussians: FeatureGaussians, views: SceneViews, backend: str, config: LiftConfig,
             indices) -> dict[str, float]:
    """Mean PSNR and feature L1 over ``indices``."""
    psnrs, l1s = [], []
    for i in indices:
        out = render_views(gaussians, views, i, backend, config.sh_degree)
        target = views.images[i:i + 1].permute(0, 3, 1, 2)
        mask = None if views.masks is None else views.masks[i:i + 1].permute(0, 3, 1, 2)
        psnrs.append(psnr(out["rgb"].clamp(0, 1), target, mask))
        l1s.append(float(step_losses(out, views, i, config)[1]))
    return {"psnr": float(np.mean(psnrs)), "feature_l1": float(np.mean(l1s)),
            "views": float(len(psnrs))}
