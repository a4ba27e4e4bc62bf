"""Stage 1 checkpoints inside a scene: everything the loop needs to go on where it stopped.

A 30,000-step scene killed at step 20,000 continues from its last checkpoint
(``<output>/<scene>/checkpoints/step_N/``, written every ``checkpoint_every`` steps with
``fit3d_hub.checkpoint``: safetensors + JSON, atomic) instead of from zero: the Gaussians and
decoder, every Adam's moments and rates, the densification strategy's accumulators, the
torch and NumPy generators, the view queue and the history. On CPU the continued run
reproduces the uninterrupted one (tested); with gsplat on a GPU, whose kernels accumulate
gradients with atomics, runs differ in the last bits either way.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fit3d_hub.checkpoint import (
    latest as latest_checkpoint,
)
from fit3d_hub.checkpoint import (
    load_optimizer,
    numpy_rng_state,
    optimizer_tensors,
    prune,
    read_checkpoint,
    read_state,
    restore_torch_rng,
    tensors_finite,
    torch_rng_tensors,
    write_checkpoint,
)
from training.lifting.gaussians import FeatureGaussians

CHECKPOINT_NAME = "checkpoints"
PREFIX = "step_"
MAY_CHANGE = ()
"""Stage 1 settings a continued scene may change: none (the schedule depends on them all)."""


@dataclass
class LoopState:
    """The loop's own progress (what is not a tensor of the model or the optimizers)."""

    step: int = 0  # the next step to run
    queue: list[int] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)
    elapsed: float = 0.0
    resets_done: int = 0


def checkpoint_dir(lifted_file: Path) -> Path:
    """Where a scene's in-progress checkpoints live, beside its (future) lifted file."""
    return Path(lifted_file).parent / CHECKPOINT_NAME


def latest(directory: Path) -> Path | None:
    """The newest checkpoint folder (``step_*``) in ``directory``, if any."""
    return latest_checkpoint(directory, PREFIX)


def has_checkpoint(directory: Path) -> bool:
    return latest(directory) is not None


def saved_settings(directory: Path) -> dict[str, Any]:
    """The settings record of a scene's newest checkpoint (reads only its JSON)."""
    return read_state(latest(directory)).get("settings", {})


def save_scene(directory: Path, gaussians: FeatureGaussians, optimizers: dict,
               decoder_opt: torch.optim.Optimizer, strategy_state: dict, rng: np.random.Generator,
               loop: LoopState, settings: dict) -> bool:
    """Write the checkpoint; returns False (writes nothing) when a tensor is not finite."""
    model = gaussians.state_tensors()
    if not tensors_finite(model.values()):
        return False
    tensors = {f"gaussians.{k}": v for k, v in model.items()}
    opt_json = {}
    for name, opt in {**optimizers, "decoder": decoder_opt}.items():
        t, j = optimizer_tensors(opt, f"optimizer.{name}")
        tensors.update(t)
        opt_json[name] = j
    strategy_json = {}
    for key, value in strategy_state.items():
        if torch.is_tensor(value):
            tensors[f"strategy.{key}"] = value
        else:
            strategy_json[key] = value
    tensors.update(torch_rng_tensors("rng"))
    write_checkpoint(directory / f"{PREFIX}{loop.step:08d}", tensors, {
        "progress": {"step": loop.step, "queue": [int(v) for v in loop.queue],
                     "history": loop.history, "elapsed": loop.elapsed,
                     "resets_done": loop.resets_done},
        "settings": settings, "optimizers": opt_json, "strategy": strategy_json,
        "numpy_rng": numpy_rng_state(rng)})
    prune(directory, PREFIX, 1)
    return True


def restore_scene(directory: Path, settings: dict, device: torch.device, make_optimizers
                  ) -> tuple[FeatureGaussians, dict, torch.optim.Optimizer, dict, LoopState,
                             dict]:
    """Read a checkpoint written with the same ``settings`` (else
    :class:`~fit3d_hub.checkpoint.SettingsChangedError`). Returns the Gaussians, their
    optimizers (``make_optimizers(gaussians)`` builds them, the saved state is loaded in),
    the strategy state, the loop state and the NumPy generator state."""
    ckpt = read_checkpoint(latest(directory), settings, MAY_CHANGE)
    prefix = "gaussians."
    gaussians = FeatureGaussians.from_state_tensors(
        {k[len(prefix):]: v for k, v in ckpt.tensors.items() if k.startswith(prefix)}
    ).to(device)
    optimizers, decoder_opt = make_optimizers(gaussians)
    for name, opt in {**optimizers, "decoder": decoder_opt}.items():
        load_optimizer(opt, ckpt.tensors, ckpt.state["optimizers"][name], f"optimizer.{name}")
    strategy_state = dict(ckpt.state.get("strategy", {}))
    for key, value in ckpt.tensors.items():
        if key.startswith("strategy."):
            strategy_state[key[len("strategy."):]] = value.to(device)
    restore_torch_rng(ckpt.tensors, "rng")
    p = ckpt.state["progress"]
    loop = LoopState(step=int(p["step"]), queue=[int(v) for v in p["queue"]],
                     history=list(p["history"]), elapsed=float(p["elapsed"]),
                     resets_done=int(p["resets_done"]))
    return gaussians, optimizers, decoder_opt, strategy_state, loop, ckpt.state["numpy_rng"]


def remove(directory: Path) -> None:
    """Drop a finished scene's checkpoint (its lifted file supersedes it)."""
    shutil.rmtree(directory, ignore_errors=True)

