"""The GMAE loop with Accelerate: DDP, mixed precision, gradient accumulation, the authors'
warm-up + cosine schedule, resumable checkpoints (bit-identical continuation), NaN stop."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from training.common.loop import BackboneRun
from training.gmae.config import GmaeConfig
from training.gmae.data import TrainingImages, epoch_batches

MAY_CHANGE = ("epochs", "save_every", "keep_checkpoints")
"""Settings a resumed run may change (how long it runs, how it saves); the schedule is read
from ``epochs``, so a longer run continues on the longer schedule."""


def epoch_lr(config: GmaeConfig, epoch: int, global_batch: int) -> float:
    """The authors' per-epoch rate: ``base_lr x global batch / 256``, linear warm-up
    ``(epoch + 1) / warmup`` for ``warmup_epochs``, then a half cosine to zero."""
    peak = config.base_lr * global_batch / 256
    if epoch < config.warmup_epochs:
        return peak * (epoch + 1) / config.warmup_epochs
    span = max(1, config.epochs - config.warmup_epochs)
    return peak * 0.5 * (1 + math.cos(math.pi * (epoch + 1 - config.warmup_epochs) / span))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """MAE's ``add_weight_decay``: no decay on biases, norms and other 1-D parameters."""
    decay, plain = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (plain if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": plain, "weight_decay": 0.0}]


def step_generator(seed: int, micro: int, rank: int) -> torch.Generator:
    """The masking noise of one micro-batch on one process (resumable)."""
    seed_value = int(np.random.default_rng([seed, micro, rank]).integers(2**62))
    return torch.Generator().manual_seed(seed_value)


def train(accelerator, model: nn.Module, images: TrainingImages, config: GmaeConfig, *,
          workers: int, checkpoint_dir: Path, resume: bool, settings: dict,
          on_step: Callable[[dict], None] | None = None) -> dict:
    """Train ``model`` (a :class:`~training.gmae.model.GMAE`) in place; returns a summary.
    Only the main process writes files."""
    settings = {**config.to_json(), "processes": accelerator.num_processes, **settings}
    torch.manual_seed(config.seed)
    optimizer = torch.optim.AdamW(param_groups(model, config.weight_decay), lr=config.base_lr,
                                  betas=(0.9, 0.95))
    run = BackboneRun.start(accelerator, model, optimizer, directory=checkpoint_dir,
                            settings=settings, may_change=MAY_CHANGE,
                            keep=config.keep_checkpoints, save_every=config.save_every,
                            resume=resume)
    model, optimizer, state = run.model, run.optimizer, run.state
    world, rank = accelerator.num_processes, accelerator.process_index
    per_epoch = len(epoch_batches(len(images), 0, seed=config.seed,
                                  batch_size=config.batch_size, rank=0, world=world))
    if per_epoch == 0:
        raise ValueError(f"{len(images)} images make no batch of {config.batch_size} x "
                         f"{world} processes; lower --batch-size")
    total = per_epoch * config.epochs
    global_batch = config.batch_size * world * config.grad_accum
    device = accelerator.device
    model.train()
    start, seen, skipped, last_loss = time.perf_counter(), 0, 0, float("nan")
    while state.micro < total:
        epoch, first = divmod(state.micro, per_epoch)
        batches = epoch_batches(len(images), epoch, seed=config.seed,
                                batch_size=config.batch_size, rank=rank, world=world)[first:]
        loader = torch.utils.data.DataLoader(images, batch_sampler=batches,
                                             num_workers=workers, pin_memory=False,
                                             persistent_workers=False)
        for group in optimizer.param_groups:
            group["lr"] = epoch_lr(config, epoch, global_batch)
        for batch in loader:
            x = batch["image"].to(device)
            skipped += int(batch["skipped"].sum())
            with accelerator.accumulate(model):
                loss, _, _ = model(x, step_generator(config.seed, state.micro, rank))
                run.stop_on_nonfinite_loss(loss)
                accelerator.backward(loss)
                if accelerator.sync_gradients and config.grad_clip > 0:
                    accelerator.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            state.micro += 1
            seen += len(x) * world
            last_loss = float(loss.detach())
            if accelerator.sync_gradients:
                state.step += 1
                if on_step is not None:
                    on_step({"step": state.step, "loss": last_loss, "epoch": epoch,
                             "images_per_s": seen / (time.perf_counter() - start)})
                run.step_done()
    run.finish()
    return {"steps": state.step, "micro_batches": state.micro, "final_loss": last_loss,
            "skipped_images": skipped, "seconds": time.perf_counter() - start}
