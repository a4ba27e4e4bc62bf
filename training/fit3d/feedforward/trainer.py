"""Training the feed-forward lifter across scenes with Accelerate: one scene per micro-batch,
context views in, target views rendered, RGB loss to geometry and feature L1 to features;
resumable (bit-identical), NaN stop, settings check (the shared :class:`BackboneRun`)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fit3d_hub.render.backends import NEAR_PLANE, backend
from training.common.loop import BackboneRun
from training.fit3d.feedforward.config import FeedForwardConfig
from training.fit3d.feedforward.data import PooledScene, sample_views
from training.fit3d.feedforward.model import ContextViews, FeedForwardLifter, PixelGaussians
from training.fit3d.lift.losses import feature_loss, psnr, rgb_loss
from training.fit3d.lift.teacher import upsample_teacher

MAY_CHANGE = ("steps", "save_every", "keep_checkpoints")
"""Settings a resumed run may change (the cosine is read from ``steps``)."""


def render(gaussians: PixelGaussians, decoder: nn.Module, viewmats: torch.Tensor,
           Ks: torch.Tensor, width: int, height: int, backend_name: str
           ) -> dict[str, torch.Tensor]:
    """RGB (N, 3, H, W; geometry trainable) and decoded features (N, C, H, W; geometry
    detached, as Stage 1 renders them) of the lifted Gaussians at the given cameras."""
    rgb, alpha, feats, _ = backend(backend_name).rasterization_with_features(
        gaussians.means, gaussians.quats, gaussians.scales, gaussians.opacities,
        gaussians.colors, gaussians.features, viewmats, Ks, width, height, sh_degree=0,
        near_plane=NEAR_PLANE, packed=False)
    return {"rgb": rgb.permute(0, 3, 1, 2), "alpha": alpha,
            "decoded": decoder(feats.permute(0, 3, 1, 2))}


class LifterTraining(nn.Module):
    """The lifter with its losses in ``forward`` (so that DDP sees one forward per step)."""

    def __init__(self, lifter: FeedForwardLifter, backend_name: str, ssim_weight: float):
        super().__init__()
        self.lifter, self.backend_name, self.ssim_weight = lifter, backend_name, ssim_weight

    def forward(self, context: ContextViews, targets: ContextViews
                ) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(RGB loss, feature loss, PSNR) of the targets rendered from the context."""
        gaussians = self.lifter(context)
        height, width = targets.images.shape[-2:]
        out = render(gaussians, self.lifter.decoder, targets.viewmats, targets.Ks, width,
                     height, self.backend_name)
        teacher = upsample_teacher(targets.teacher, height, width)
        l_rgb = rgb_loss(out["rgb"], targets.images, self.ssim_weight)
        l_feat = feature_loss(out["decoded"], teacher)
        return l_rgb, l_feat, psnr(out["rgb"].detach().clamp(0, 1), targets.images)


def step_lr(config: FeedForwardConfig, step: int) -> float:
    """Linear warm-up, then a half cosine to ``min_lr`` (LSM's croco schedule, per step)."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    span = max(1, config.steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    return config.min_lr + (config.lr - config.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


def sample_generator(seed: int, micro: int, rank: int) -> np.random.Generator:
    """The scene and views of one micro-batch on one process (resumable from ``micro``)."""
    return np.random.default_rng([seed, micro, rank])


def train(accelerator, model: LifterTraining, scenes: list[PooledScene],
          config: FeedForwardConfig, *, checkpoint_dir: Path, resume: bool, settings: dict,
          on_step: Callable[[dict], None] | None = None) -> dict:
    """Train ``model`` in place on ``scenes`` for ``config.steps`` optimizer steps; returns a
    summary. Only the main process writes files."""
    settings = {**config.to_json(), "processes": accelerator.num_processes, **settings}
    torch.manual_seed(config.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=(0.9, 0.95),
                                  weight_decay=config.weight_decay)
    run = BackboneRun.start(accelerator, model, optimizer, directory=checkpoint_dir,
                            settings=settings, may_change=MAY_CHANGE,
                            keep=config.keep_checkpoints, save_every=config.save_every,
                            resume=resume)
    model, optimizer, state = run.model, run.optimizer, run.state
    device, rank = accelerator.device, accelerator.process_index
    model.train()
    start, last = time.perf_counter(), {"loss": float("nan")}
    while state.step < config.steps:
        rng = sample_generator(config.seed, state.micro, rank)
        scene = scenes[int(rng.integers(len(scenes)))]
        context, targets = sample_views(scene, rng, config.context_views, config.target_views)
        for group in optimizer.param_groups:
            group["lr"] = step_lr(config, state.step)
        with accelerator.accumulate(model):
            l_rgb, l_feat, quality = model(scene.context(context, device),
                                           scene.context(targets, device))
            loss = l_rgb + config.feature_weight * l_feat
            run.stop_on_nonfinite_loss(loss, where=f" (scene {scene.name}, context {context}, "
                                                   f"targets {targets})")
            accelerator.backward(loss)
            if accelerator.sync_gradients and config.grad_clip > 0:
                accelerator.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        state.micro += 1
        last = {"loss": float(loss.detach()), "rgb_loss": float(l_rgb.detach()),
                "feature_l1": float(l_feat.detach()), "psnr": quality}
        if accelerator.sync_gradients:
            state.step += 1
            if on_step is not None:
                on_step({"step": state.step, **last})
            run.step_done()
    run.finish()
    return {"steps": state.step, "micro_batches": state.micro, "final_loss": last["loss"],
            "final": last, "seconds": time.perf_counter() - start}
