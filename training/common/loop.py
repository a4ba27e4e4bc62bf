"""What every training loop shares: the resumable state of a backbone run over the one
checkpointer (:class:`fit3d_hub.checkpoint.Checkpointer`), the stop on a non-finite loss, and
the progress bar."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from fit3d_hub.checkpoint import (
    Checkpointer,
    DataclassState,
    ModuleState,
    OptimizerState,
    TorchRNGState,
    tensors_finite,
)
from fit3d_hub.distributed import finite_everywhere
from fit3d_hub.errors import TrainingStopped

CHECKPOINTS = "checkpoints"
"""The folder of a run's checkpoints inside its output."""


@dataclass
class TrainState:
    """Progress, saved in every checkpoint."""

    step: int = 0  # optimizer steps done
    micro: int = 0  # micro-batches done (all processes together count as one)


class ScalerState:
    """Accelerate's mixed-precision gradient scaler (fp16), if the run has one."""

    finite = False

    def __init__(self, accelerator: Any):
        self.accelerator = accelerator

    def state(self) -> tuple[dict[str, torch.Tensor], Any]:
        scaler = self.accelerator.scaler
        return {}, scaler.state_dict() if scaler is not None else None

    def load(self, tensors: Mapping[str, torch.Tensor], saved: Any) -> None:
        if self.accelerator.scaler is not None and saved:
            self.accelerator.scaler.load_state_dict(saved)


def stop_on_nonfinite_loss(loss: torch.Tensor, step: int, *, accelerator: Any = None,
                           last_good: str | None = None,
                           where: str | Callable[[], str] = "") -> None:
    """Raise :class:`TrainingStopped` (on every process) when ``loss`` is not finite on any,
    before anything is learned from it; ``where`` (the scene, the views; a callable is only
    called then) goes into the line."""
    if accelerator is not None:
        if finite_everywhere(accelerator, loss):
            return
    elif bool(torch.isfinite(loss.detach()).all()):
        return
    value = float(loss.detach())
    what = value if not math.isfinite(value) else "non-finite on another process"
    tail = f". The last good checkpoint is {last_good}" if last_good is not None else ""
    where = where() if callable(where) else where
    raise TrainingStopped(f"loss became {what} at step {step}{where}; nothing was saved from "
                          f"it{tail}")


@dataclass
class BackboneRun:
    """The resumable state of a backbone-training loop (FiT3D Stage 2, the equivariance
    method): the trained module's weights, its optimizer, the mixed-precision scaler, the
    progress and every process's torch generator, saved and restored by one
    :class:`~fit3d_hub.checkpoint.Checkpointer`."""

    accelerator: Any
    model: nn.Module
    """As Accelerate prepared it (the weights saved are the unwrapped module's)."""
    optimizer: torch.optim.Optimizer
    checkpoints: Checkpointer
    save_every: int = 0
    state: TrainState = field(default_factory=TrainState)

    @classmethod
    def create(cls, accelerator: Any, model: nn.Module, optimizer: torch.optim.Optimizer, *,
               directory: Path, settings: dict, may_change: tuple[str, ...], keep: int,
               save_every: int) -> BackboneRun:
        checkpoints = Checkpointer(Path(directory), settings, may_change, keep, accelerator)
        return cls(accelerator, model, optimizer, checkpoints, save_every)

    @classmethod
    def start(cls, accelerator: Any, model: nn.Module, optimizer: torch.optim.Optimizer, *,
              directory: Path, settings: dict, may_change: tuple[str, ...], keep: int,
              save_every: int, resume: bool) -> BackboneRun:
        """Prepare ``model`` and ``optimizer`` with Accelerate and, with ``resume``, continue
        from the newest checkpoint (use ``run.model`` and ``run.optimizer`` after)."""
        model, optimizer = accelerator.prepare(model, optimizer)
        run = cls.create(accelerator, model, optimizer, directory=directory, settings=settings,
                         may_change=may_change, keep=keep, save_every=save_every)
        if resume and run.resume():
            # Accelerate decides when gradients sync from its own micro-step counter.
            accelerator.step = run.state.micro
        return run

    def _shared(self) -> dict:
        return {"model": ModuleState(self.accelerator.unwrap_model(self.model)),
                "optimizer": OptimizerState(self.optimizer),
                "progress": DataclassState(self.state),
                "scaler": ScalerState(self.accelerator)}

    def resume(self) -> bool:
        """Continue from the newest checkpoint, if there is one (settings checked)."""
        step = self.checkpoints.restore(self._shared(), {"rng": TorchRNGState()})
        if step is None:
            return False
        self.accelerator.print(f"resumed from {self.checkpoints.latest()} (step {step})")
        return True

    def step_done(self) -> None:
        """After an optimizer step: save when ``save_every`` says so."""
        if self.save_every > 0 and self.state.step % self.save_every == 0:
            self.checkpoints.save(self.state.step, self._shared(), {"rng": TorchRNGState()})

    def stop_on_nonfinite_loss(self, loss: torch.Tensor, where: str = "") -> None:
        stop_on_nonfinite_loss(loss, self.state.step + 1, accelerator=self.accelerator,
                               last_good=self.checkpoints.last_good(), where=where)

    def finish(self) -> None:
        """The end-of-run checkpoint (if the run saves any), then refuse to go on with
        non-finite weights."""
        if self.save_every > 0:
            self.checkpoints.save_final(self.state.step, self._shared(),
                                        {"rng": TorchRNGState()})
        weights = list(self.accelerator.unwrap_model(self.model).parameters())
        if not tensors_finite(weights):
            raise TrainingStopped(f"weights became non-finite by step {self.state.step}; no "
                                  "repo written. The last good checkpoint is "
                                  f"{self.checkpoints.last_good()}")


def progress_bar(desc: str, total: int | None, enabled: bool, position: int = 0) -> tqdm:
    """The project's progress bar: one line, refreshed at most once a second."""
    return tqdm(total=total, desc=desc, position=position, leave=True, dynamic_ncols=True,
                mininterval=1.0, disable=not enabled)
