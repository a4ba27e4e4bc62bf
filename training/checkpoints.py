"""Resumable training checkpoints for the backbone fine-tuning loops (FiT3D Stage 2 and the
equivariance method): weights, optimizer, every process's RNG and the progress, written as
safetensors + JSON by :mod:`fit3d_hub.checkpoint`."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from fit3d_hub.checkpoint import (
    TENSORS,
    latest,
    load_optimizer,
    optimizer_tensors,
    prune,
    read_checkpoint,
    restore_torch_rng,
    tensors_finite,
    torch_rng_tensors,
    write_checkpoint,
)
from fit3d_hub.distributed import finite_everywhere
from fit3d_hub.weights import load_strict

CHECKPOINT_PREFIX = "step_"


class TrainingStopped(RuntimeError):
    """Training cannot go on (NaN loss, non-finite weights); the last good checkpoint is
    kept."""


@dataclass
class TrainState:
    """Progress, saved in every checkpoint's ``state.json``."""

    step: int = 0  # optimizer steps done
    micro: int = 0  # micro-batches done (all processes together count as one)


def latest_checkpoint(directory: Path) -> Path | None:
    return latest(directory, CHECKPOINT_PREFIX)


def last_good(directory: Path) -> str:
    """The newest checkpoint, for error messages."""
    last = latest_checkpoint(directory)
    return str(last) if last is not None else "none (no checkpoint was written yet)"


def save_checkpoint(accelerator, directory: Path, model: nn.Module, optimizer,
                    state: TrainState, settings: dict, keep: int) -> Path:
    """Save on the main process (every process's RNG gathered); refused if a weight is not
    finite. Old checkpoints beyond ``keep`` are pruned."""
    from accelerate.utils import gather_object

    weights = accelerator.unwrap_model(model).state_dict()
    if not tensors_finite(weights.values()):
        raise TrainingStopped(f"weights became non-finite by step {state.step}; not saved. "
                              f"The last good checkpoint is {last_good(directory)}")
    rng = gather_object([torch_rng_tensors(f"rng.{accelerator.process_index}")])
    final = directory / f"{CHECKPOINT_PREFIX}{state.step:08d}"
    if accelerator.is_main_process:
        opt_tensors, opt_state = optimizer_tensors(optimizer, "optimizer")
        tensors = {**{f"model.{k}": v for k, v in weights.items()}, **opt_tensors}
        for r in rng:
            tensors.update(r)
        scaler = accelerator.scaler.state_dict() if accelerator.scaler is not None else None
        write_checkpoint(final, tensors, {"progress": asdict(state), "settings": settings,
                                          "optimizer": opt_state, "scaler": scaler})
        prune(directory, CHECKPOINT_PREFIX, keep)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, path: Path, model: nn.Module, optimizer, state: TrainState,
                    settings: dict, may_change: Iterable[str]) -> None:
    """Resume from ``path``; a checkpoint written with other settings (outside
    ``may_change``) is refused with :class:`fit3d_hub.errors.SettingsChangedError`."""
    ckpt = read_checkpoint(path, settings, may_change)
    prefix = "model."
    weights = {k[len(prefix):]: v for k, v in ckpt.tensors.items() if k.startswith(prefix)}
    load_strict(accelerator.unwrap_model(model), weights, str(path / TENSORS))
    load_optimizer(optimizer, ckpt.tensors, ckpt.state["optimizer"], "optimizer")
    restore_torch_rng(ckpt.tensors, f"rng.{accelerator.process_index}")
    if accelerator.scaler is not None and ckpt.state.get("scaler"):
        accelerator.scaler.load_state_dict(ckpt.state["scaler"])
    progress = ckpt.state["progress"]
    state.step, state.micro = int(progress["step"]), int(progress["micro"])


def resume_latest(accelerator, directory: Path, model: nn.Module, optimizer, state: TrainState,
                  settings: dict, may_change: Iterable[str]) -> Path | None:
    """Load the newest checkpoint in ``directory`` if there is one; returns it."""
    last = latest_checkpoint(directory)
    if last is not None:
        load_checkpoint(accelerator, last, model, optimizer, state, settings, may_change)
        accelerator.print(f"resumed from {last} (step {state.step})")
    return last


def save_final(accelerator, directory: Path, model: nn.Module, optimizer, state: TrainState,
               settings: dict, keep: int) -> None:
    """The end-of-run checkpoint, unless the last periodic one is of this step."""
    last = latest_checkpoint(directory)
    if last is None or last.name != f"{CHECKPOINT_PREFIX}{state.step:08d}":
        save_checkpoint(accelerator, directory, model, optimizer, state, settings, keep)


def stop_on_nonfinite_loss(accelerator, loss: torch.Tensor, step: int, directory: Path,
                           where: str = "") -> None:
    """Raise :class:`TrainingStopped` on every process if ``loss`` is not finite on any
    (before anything is learned from it); ``where`` (e.g. the scene) goes into the line."""
    if finite_everywhere(accelerator, loss):
        return
    value = float(loss.detach())
    what = value if not math.isfinite(value) else "non-finite on another process"
    raise TrainingStopped(f"loss became {what} at step {step}{where}; nothing was saved from "
                          f"it. The last good checkpoint is {last_good(directory)}")


def check_finite(accelerator, model: nn.Module, state: TrainState, directory: Path) -> None:
    """Refuse to export non-finite weights."""
    params: list[torch.Tensor] = list(accelerator.unwrap_model(model).parameters())
    if not tensors_finite(params):
        raise TrainingStopped(f"weights became non-finite by step {state.step}; no repo "
                              f"written. The last good checkpoint is {last_good(directory)}")
