"""Linear-probe checkpoints: the heads, their optimizer, every process's generators, the step.

The paper protocol trains heads for 40,000 iterations on GPUs; a killed probe continues from
its last checkpoint (``--resume``) and ends where an uninterrupted one would. The format is
``fit3d_hub.checkpoint``'s (safetensors + JSON, atomic; nothing unpickled).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fit3d_hub.checkpoint import (
    latest,
    load_optimizer,
    numpy_rng_state,
    optimizer_tensors,
    prune,
    read_checkpoint,
    restore_numpy_rng,
    restore_torch_rng,
    torch_rng_tensors,
    write_checkpoint,
)
from fit3d_hub.errors import CheckpointError

PREFIX = "step_"
MAY_CHANGE = ()
"""Nothing may change on resume: the schedule, the data and the heads depend on it all."""


def _gather(accelerator, value: Any) -> list[Any]:
    if accelerator is None or accelerator.num_processes == 1:
        return [value]
    from accelerate.utils import gather_object

    return gather_object([value])


@dataclass
class ProbeCheckpoints:
    """Where and how often a probe saves, and whether it continues from the last save."""

    directory: Path
    every: int
    resume: bool
    settings: dict[str, Any]

    def restore(self, accelerator, heads: torch.nn.Module, optimizer,
                rng: np.random.Generator) -> int:
        """Load the newest checkpoint into ``heads``, ``optimizer`` and the generators;
        returns the step to continue from (0 without ``resume`` or checkpoint)."""
        found = latest(self.directory, PREFIX)
        if not self.resume or found is None:
            return 0
        ckpt = read_checkpoint(found, self.settings, MAY_CHANGE)
        rank = accelerator.process_index if accelerator is not None else 0
        unwrapped = accelerator.unwrap_model(heads) if accelerator is not None else heads
        state = {k[len("heads."):]: v for k, v in ckpt.tensors.items()
                 if k.startswith("heads.")}
        try:
            unwrapped.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise CheckpointError(f"{found}: heads do not fit this probe ({err})") from None
        load_optimizer(optimizer, ckpt.tensors, ckpt.state["optimizer"], "optimizer")
        restore_torch_rng(ckpt.tensors, f"rng.{rank}")
        restore_numpy_rng(rng, ckpt.state["numpy_rng"][rank])
        return int(ckpt.state["progress"]["step"])

    def due(self, step: int, total: int) -> bool:
        """Whether to save after ``step`` steps are done (not after the last)."""
        return self.every > 0 and step < total and step % self.every == 0

    def save(self, accelerator, step: int, heads: torch.nn.Module, optimizer,
             rng: np.random.Generator) -> None:
        """Save after ``step`` steps; only the main process writes."""
        rank = accelerator.process_index if accelerator is not None else 0
        mine = {"numpy": numpy_rng_state(rng), "torch": torch_rng_tensors(f"rng.{rank}")}
        everyone = _gather(accelerator, mine)
        if accelerator is not None and not accelerator.is_main_process:
            accelerator.wait_for_everyone()
            return
        unwrapped = accelerator.unwrap_model(heads) if accelerator is not None else heads
        tensors = {f"heads.{k}": v for k, v in unwrapped.state_dict().items()}
        opt_tensors, opt_state = optimizer_tensors(optimizer, "optimizer")
        tensors.update(opt_tensors)
        for entry in everyone:
            tensors.update(entry["torch"])
        write_checkpoint(self.directory / f"{PREFIX}{step:08d}", tensors, {
            "progress": {"step": step}, "settings": self.settings, "optimizer": opt_state,
            "numpy_rng": [entry["numpy"] for entry in everyone]})
        prune(self.directory, PREFIX, 1)
        if accelerator is not None:
            accelerator.wait_for_everyone()

    def finish(self) -> None:
        """The results are written: the checkpoints have served their purpose."""
        shutil.rmtree(self.directory, ignore_errors=True)
