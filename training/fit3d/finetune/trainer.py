"""The Stage 2 loop: fine-tune a backbone on rendered 3D-aware features, with Accelerate."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fit3d_hub.errors import TrainingStopped
from fit3d_hub.model import block_features
from fit3d_hub.transforms import FiT3DTransform
from training.common.loop import BackboneRun
from training.fit3d.finetune.config import FinetuneConfig
from training.fit3d.finetune.data import LiftedStore
from training.fit3d.finetune.targets import make_sample, masked_l1

FinetuneError = TrainingStopped
"""Stage 2 cannot go on (NaN loss); the last good checkpoint is kept."""


class PatchFeatures(nn.Module):
    """The trained backbone as a module whose forward is the FiT3D feature map, so DDP's
    gradient synchronisation sees the call."""

    def __init__(self, vit: nn.Module):
        super().__init__()
        self.vit = vit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return block_features(self.vit, x)[0]


MAY_CHANGE = ("epochs", "save_every", "keep_checkpoints")
"""Settings a resumed run may change: how long it runs and how it checkpoints. Every other
setting, and the backbone, scene set, mixed precision and process count, must match."""


def epoch_order(train_views: list[list[int]], epoch: int, seed: int
                ) -> list[tuple[int, int, bool]]:
    """(scene, view, flip) of one epoch: every training view once, in a seeded order.

    ``train_views`` are Stage 1's per scene (its record), so neither stage sees a held-out
    view.
    """
    pairs = [(s, v) for s, views in enumerate(train_views) for v in views]
    rng = np.random.default_rng([seed, epoch])
    perm = rng.permutation(len(pairs))
    flips = rng.random(len(pairs)) < 0.5
    return [(pairs[i][0], pairs[i][1], bool(flips[k])) for k, i in enumerate(perm)]


def epoch_lr(config: FinetuneConfig, epoch: int) -> float:
    """The learning rate of ``epoch`` (0-based): 0.1x after each epoch in ``lr_drop``."""
    return config.lr * 0.1 ** sum(1 for m in config.lr_drop if epoch >= m)


def finetune(accelerator, vit: nn.Module, store: LiftedStore, config: FinetuneConfig, *,
             transform: FiT3DTransform, backend: str, checkpoint_dir: Path, resume: bool,
             settings: dict | None = None, on_step: Callable[[dict], None] | None = None
             ) -> dict:
    """Train ``vit`` in place on inputs preprocessed by ``transform`` (the teacher's); returns
    a summary. Only the main process writes files.

    ``settings`` is the record a checkpoint keeps (``config`` and what else the run was
    started with); ``resume`` refuses a checkpoint whose record differs outside
    ``MAY_CHANGE``.
    """
    settings = {**config.to_json(), "processes": accelerator.num_processes,
                **(settings or {})}
    torch.manual_seed(config.seed)
    model = PatchFeatures(vit)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr,
                                  weight_decay=config.weight_decay)
    run = BackboneRun.start(accelerator, model, optimizer, directory=checkpoint_dir,
                            settings=settings, may_change=MAY_CHANGE,
                            keep=config.keep_checkpoints, save_every=config.save_every,
                            resume=resume)
    model, optimizer, state = run.model, run.optimizer, run.state
    per_micro = config.batch_size * accelerator.num_processes
    train_views = store.training_views()
    micro_per_epoch = len(epoch_order(train_views, 0, config.seed)) // per_micro
    if micro_per_epoch == 0:
        raise FinetuneError(f"fewer training views than one batch ({per_micro}); lower "
                            "--batch-size")
    total_micro = micro_per_epoch * config.epochs
    device = accelerator.device
    model.train()
    start, seen, last_loss = time.perf_counter(), 0, float("nan")
    while state.micro < total_micro:
        epoch, index = divmod(state.micro, micro_per_epoch)
        order = epoch_order(train_views, epoch, config.seed)
        first = index * per_micro + accelerator.process_index * config.batch_size
        picks = order[first:first + config.batch_size]
        samples = [make_sample(store.scene(s), v, f and config.hflip, transform, backend, device,
                               config.coverage_mask) for s, v, f in picks]
        shapes = {tuple(s.image.shape) for s in samples}
        if len(shapes) > 1:
            raise FinetuneError(f"views of different sizes in one batch: {sorted(shapes)}; "
                                "lift all scenes at one image size (or use --batch-size 1)")
        images = torch.stack([s.image for s in samples])
        targets = torch.stack([s.target for s in samples])
        masks = torch.stack([s.mask for s in samples])
        for group in optimizer.param_groups:
            group["lr"] = epoch_lr(config, epoch)
        with accelerator.accumulate(model):
            pred = model(images)
            loss = masked_l1(pred.float(), targets, masks)
            run.stop_on_nonfinite_loss(loss)
            accelerator.backward(loss)
            if accelerator.sync_gradients and config.grad_clip > 0:
                accelerator.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        state.micro += 1
        seen += per_micro
        last_loss = float(loss.detach())
        if accelerator.sync_gradients:
            state.step += 1
            if on_step is not None:
                on_step({"step": state.step, "loss": last_loss,
                         "samples_per_s": seen / (time.perf_counter() - start)})
            run.step_done()
    run.finish()
    return {"steps": state.step, "micro_batches": state.micro, "final_loss": last_loss,
            "seconds": time.perf_counter() - start}
