"""Accelerate sessions that end cleanly, and checks every process agrees on.

A process that exits while its process group is alive can abort in the backend's thread
teardown ("terminate called without an active exception", SIGABRT, seen with gloo when one
rank finished before the other): every command that creates an ``Accelerator`` runs inside
:func:`accelerator_session`, which lets all processes reach the end and then destroys the
group. ``accelerate`` is imported only when a session starts (training and eval use it; the
inference package does not).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


@contextmanager
def accelerator_session(**kwargs: Any) -> Iterator[Any]:
    """An ``accelerate.Accelerator(**kwargs)`` whose process group is destroyed on the way
    out; on a normal exit every process first waits for the others (an exception skips the
    wait, which could hang on a process that is not coming)."""
    from accelerate import Accelerator

    accelerator = Accelerator(**kwargs)
    finished = False
    try:
        yield accelerator
        finished = True
    finally:
        if finished:
            accelerator.wait_for_everyone()
        accelerator.end_training()
        # Accelerate keeps its state (mixed precision among it) process-wide: forget it, so
        # that a later run in this process (a notebook, a test) may choose other settings.
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state()


def finite_everywhere(accelerator: Any, value: torch.Tensor) -> bool:
    """Whether ``value`` is finite on every process (one small all-reduce), so that all
    processes stop together instead of one waiting forever in the next collective."""
    bad = (~torch.isfinite(value.detach())).any().float().reshape(1)
    if accelerator.num_processes > 1:
        bad = accelerator.reduce(bad, reduction="sum")
    return not bool(bad.item())
