"""Linear-probe checkpoints: the heads, their optimizer, every process's generators, the step.

The paper protocol trains heads for 40,000 iterations on GPUs; a killed probe continues from
its last checkpoint (``--resume``) and ends where an uninterrupted one would. Saved by the
project's one checkpointer (:class:`fit3d_hub.checkpoint.Checkpointer`: safetensors + JSON,
atomic; nothing unpickled).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fit3d_hub.checkpoint import (
    Checkpointer,
    ModuleState,
    NumpyRNGState,
    OptimizerState,
    TorchRNGState,
)

MAY_CHANGE = ()
"""Nothing may change on resume: the schedule, the data and the heads depend on it all."""


@dataclass
class ProbeCheckpoints:
    """Where and how often a probe saves, and whether it continues from the last save."""

    directory: Path
    every: int
    resume: bool
    settings: dict[str, Any]

    def _checkpointer(self, accelerator) -> Checkpointer:
        return Checkpointer(self.directory, self.settings, MAY_CHANGE, keep=1,
                            accelerator=accelerator)

    @staticmethod
    def _parts(accelerator, heads: torch.nn.Module, optimizer, rng: np.random.Generator
               ) -> tuple[dict, dict]:
        unwrapped = accelerator.unwrap_model(heads) if accelerator is not None else heads
        return ({"heads": ModuleState(unwrapped), "optimizer": OptimizerState(optimizer)},
                {"rng": TorchRNGState(), "numpy_rng": NumpyRNGState(rng)})

    def restore(self, accelerator, heads: torch.nn.Module, optimizer,
                rng: np.random.Generator) -> int:
        """Load the newest checkpoint into ``heads``, ``optimizer`` and the generators;
        returns the step to continue from (0 without ``resume`` or checkpoint)."""
        if not self.resume:
            return 0
        step = self._checkpointer(accelerator).restore(
            *self._parts(accelerator, heads, optimizer, rng))
        return step or 0

    def due(self, step: int, total: int) -> bool:
        """Whether to save after ``step`` steps are done (not after the last)."""
        return self.every > 0 and step < total and step % self.every == 0

    def save(self, accelerator, step: int, heads: torch.nn.Module, optimizer,
             rng: np.random.Generator) -> None:
        """Save after ``step`` steps; every process calls it, the main one writes."""
        self._checkpointer(accelerator).save(step, *self._parts(accelerator, heads,
                                                                optimizer, rng))

    def finish(self) -> None:
        """The results are written: the checkpoints have served their purpose."""
        self._checkpointer(None).remove()
