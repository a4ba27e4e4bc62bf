"""Fitting one scene's feature Gaussians: the Stage 1 loop, composed of importable pieces."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from fit3d_hub.checkpoint import restore_numpy_rng, tensors_finite
from scenes.holdout import training_views
from scenes.types import Scene
from scenes.views import SceneImages
from training.lifting import resume
from training.lifting.gaussians import FeatureGaussians, LearningRates, scene_scale
from training.lifting.losses import feature_loss, fill_masked, psnr, rgb_loss
from training.lifting.rasterize import NEAR_PLANE, backend
from training.lifting.strategy import OpacityResetStrategy
from training.lifting.teacher import upsample_teacher

LOG_EVERY = 10  # steps between progress records (each costs a device sync and a PSNR)
HISTORY_EVERY = 50  # a multiple of LOG_EVERY


class LiftError(RuntimeError):
    """A scene that cannot be lifted (NaN loss, degenerate data); the run goes on without it."""


@dataclass
class LiftConfig:
    """Stage 1 settings; defaults are 3DGS's and the paper's."""

    iterations: int = 30_000
    feature_dim: int = 64
    sh_degree: int = 3
    sh_degree_interval: int = 1000
    ssim_weight: float = 0.2
    feature_weight: float = 1.0
    downscale: float = 1.0
    max_points: int | None = None
    """Initial Gaussians from at most this many scene points (None: all, as the authors)."""
    random_points: int = 20_000
    seed: int = 0
    lr: LearningRates = field(default_factory=LearningRates)
    refine_start_iter: int = 500
    refine_stop_iter: int = 15_000
    refine_every: int = 100
    reset_every: int = 3000
    grow_grad2d: float = 0.0002
    holdout_every: int = 0
    """Every k-th view is held out of training (0: train on all)."""
    hold_out_test_frames: bool = False
    """Keep ScanNet++'s test_frames out of training (the authors train on them)."""

    def to_json(self) -> dict:
        return asdict(self)


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
               checkpoint: Path | None = None, checkpoint_every: int = 0,
               settings: dict | None = None) -> LiftResult:
    """Optimise the scene's feature Gaussians for ``config.iterations`` steps.

    ``on_step(step, record)`` is called every ``LOG_EVERY`` steps and after the last one.
    With ``checkpoint`` (a folder) the loop saves its whole state there every
    ``checkpoint_every`` steps and, if a checkpoint is there already, continues from it;
    ``settings`` (``config`` and what else the run was started with) must match the saved
    ones (:class:`~fit3d_hub.checkpoint.SettingsChangedError` otherwise).
    """
    torch.manual_seed(config.seed)
    extent = scene_scale(scene)
    settings = {**config.to_json(), **(settings or {})}
    strategy = OpacityResetStrategy(
        refine_start_iter=config.refine_start_iter, refine_stop_iter=config.refine_stop_iter,
        refine_every=config.refine_every, reset_every=config.reset_every,
        grow_grad2d=config.grow_grad2d)
    rng = np.random.default_rng(config.seed)
    if checkpoint is not None and resume.has_checkpoint(checkpoint):
        gaussians, optimizers, decoder_opt, state, loop, rng_state = resume.restore_scene(
            checkpoint, settings, device, lambda g: g.optimizers(config.lr, extent))
        restore_numpy_rng(rng, rng_state)
        strategy.resets_done = loop.resets_done
    else:
        gaussians = FeatureGaussians.initialise(
            scene, feature_dim=config.feature_dim, teacher_dim=views.teacher.shape[1],
            sh_degree=config.sh_degree, max_points=config.max_points,
            random_points=config.random_points, seed=config.seed).to(device)
        optimizers, decoder_opt = gaussians.optimizers(config.lr, extent)
        state = strategy.initialize_state(scene_scale=extent)
        loop = resume.LoopState()
    strategy.check_sanity(gaussians.splats, optimizers)
    decay = (config.lr.means_final / config.lr.means) ** (1.0 / max(config.iterations, 1))
    order = scene_training_views(scene, config)
    start = time.perf_counter() - loop.elapsed
    for step in range(loop.step, config.iterations):
        if not loop.queue:
            loop.queue = list(rng.permutation(order))
        index = int(loop.queue.pop())
        # the authors raise the degree at their 1-based iteration k * interval
        degree = min((step + 1) // config.sh_degree_interval, config.sh_degree)
        out = render_views(gaussians, views, index, backend, degree)
        strategy.step_pre_backward(gaussians.splats, optimizers, state, step, out["info"])
        l_rgb, l_feat = step_losses(out, views, index, config)
        loss = l_rgb + config.feature_weight * l_feat
        if not torch.isfinite(loss):
            rgb, feat = float(l_rgb.detach()), float(l_feat.detach())
            raise LiftError(f"{scene.root}: loss became {float(loss.detach())} at step {step} "
                            f"(rgb {rgb:.4g}, feature {feat:.4g})")
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
        if checkpoint is not None and checkpoint_every > 0 and not last \
                and (step + 1) % checkpoint_every == 0:
            loop.step, loop.elapsed = step + 1, time.perf_counter() - start
            loop.resets_done = strategy.resets_done
            if not resume.save_scene(checkpoint, gaussians, optimizers, decoder_opt, state, rng,
                                     loop, settings):
                raise LiftError(f"{scene.root}: the Gaussians became non-finite by step {step}; "
                                "not saved")
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
