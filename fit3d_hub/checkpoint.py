"""Training checkpoints that load without running code: safetensors and JSON, nothing else.

A checkpoint is a folder holding ``tensors.safetensors`` (weights, optimizer moments, RNG
states: every tensor) and ``state.json`` (progress, the settings of the run, optimizer
hyper-parameters, NumPy generator states). It is written into a hidden folder and renamed
when complete, so a folder with the final name is whole. Reading never unpickles: a
checkpoint copied from someone else cannot run code here, and a damaged or planted file is
refused with one line naming it. Stage 1, Stage 2 and the linear probe all save this way.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from fit3d_hub.atomic import atomic_directory
from fit3d_hub.errors import CheckpointError, SettingsChangedError
from fit3d_hub.jsonio import read_json_object
from fit3d_hub.weights import write_safetensors

TENSORS = "tensors.safetensors"
STATE = "state.json"
FORMAT = "fit3d-hub training checkpoint"
VERSION = 1


@dataclass
class Checkpoint:
    """What one checkpoint folder holds."""

    tensors: dict[str, torch.Tensor]
    state: dict[str, Any]
    path: Path


def write_checkpoint(directory: str | Path, tensors: Mapping[str, torch.Tensor],
                     state: Mapping[str, Any]) -> Path:
    """Write the folder ``directory`` atomically (replacing one of that name)."""
    text = json.dumps({"format": FORMAT, "version": VERSION, **state}, indent=1)
    with atomic_directory(directory) as tmp:
        write_safetensors(tensors, tmp / TENSORS)
        (tmp / STATE).write_text(text + "\n", encoding="utf-8")
    return Path(directory)


def read_state(directory: str | Path) -> dict[str, Any]:
    """A checkpoint's ``state.json`` alone (progress and settings, no tensors)."""
    directory = Path(directory)
    for path in (directory / STATE, directory / TENSORS):
        if not path.is_file():
            raise CheckpointError(f"{path}: missing; {directory} is not a fit3d-hub checkpoint "
                                  "(or was written by another version)")
    state_path = directory / STATE
    state = read_json_object(state_path, error=CheckpointError)
    if state.get("format") != FORMAT:
        raise CheckpointError(f"{state_path}: not a checkpoint state (no '{FORMAT}' format "
                              "field)")
    return state


def read_checkpoint(directory: str | Path, settings: Mapping[str, Any] | None = None,
                    may_change: Iterable[str] = ()) -> Checkpoint:
    """Read a checkpoint folder; anything but our two files, intact, is a one-line error.

    With ``settings``, a checkpoint written with other ones (outside ``may_change``) is
    refused with :class:`SettingsChangedError`.
    """
    directory = Path(directory)
    state = read_state(directory)
    tensor_path = directory / TENSORS
    try:
        tensors = load_file(str(tensor_path))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{tensor_path}: not a readable safetensors file ({err})") \
            from None
    if settings is not None:
        check_settings(directory, state.get("settings", {}), settings, may_change)
    return Checkpoint(tensors, state, directory)


def checkpoints(directory: str | Path, prefix: str) -> list[Path]:
    """Finished checkpoint folders ``prefix*`` in ``directory``, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.glob(f"{prefix}*") if p.is_dir())


def latest(directory: str | Path, prefix: str) -> Path | None:
    """The newest finished checkpoint folder ``prefix*`` in ``directory``, if any."""
    found = checkpoints(directory, prefix)
    return found[-1] if found else None


def prune(directory: str | Path, prefix: str, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints."""
    for old in checkpoints(directory, prefix)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


# optimizers ---------------------------------------------------------------------------------

def optimizer_tensors(optimizer: torch.optim.Optimizer, prefix: str
                      ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer's state dict split into tensors (``prefix.<param>.<name>``) and JSON."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entries in sd["state"].items():
        for name, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"{prefix}.{index}.{name}"] = value
            else:
                scalars.setdefault(str(index), {})[name] = value
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()}
              for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def load_optimizer(optimizer: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor],
                   saved: Mapping[str, Any], prefix: str) -> None:
    """Inverse of :func:`optimizer_tensors`."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith(prefix + "."):
            index, name = key[len(prefix) + 1:].split(".", 1)
            state.setdefault(int(index), {})[name] = value
    for index, entries in saved.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(entries)
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()}
              for g in saved["param_groups"]]
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError, RuntimeError) as err:
        raise CheckpointError(f"optimizer state '{prefix}' does not fit this run ({err})") \
            from None


# random number generators -------------------------------------------------------------------

def torch_rng_tensors(prefix: str = "rng") -> dict[str, torch.Tensor]:
    """The CPU generator's state and every CUDA device's."""
    out = {f"{prefix}.cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"{prefix}.cuda.{i}"] = s
    return out


def restore_torch_rng(tensors: Mapping[str, torch.Tensor], prefix: str = "rng") -> None:
    if f"{prefix}.cpu" in tensors:
        torch.set_rng_state(tensors[f"{prefix}.cpu"].to(torch.uint8))
    if torch.cuda.is_available():
        states = [tensors[f"{prefix}.cuda.{i}"] for i in range(torch.cuda.device_count())
                  if f"{prefix}.cuda.{i}" in tensors]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)


def numpy_rng_state(rng: np.random.Generator) -> dict[str, Any]:
    """A NumPy generator's state as JSON (its integers are exact in Python's JSON)."""
    return rng.bit_generator.state


def restore_numpy_rng(rng: np.random.Generator, state: Mapping[str, Any]) -> None:
    try:
        rng.bit_generator.state = dict(state)
    except (TypeError, ValueError, KeyError) as err:
        raise CheckpointError(f"NumPy generator state does not fit ({err})") from None


# the settings record ------------------------------------------------------------------------

def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return a == b


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as ``outer.inner`` keys, so a difference names the leaf."""
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def settings_differences(saved: Mapping[str, Any], current: Mapping[str, Any],
                         may_change: Iterable[str] = ()) -> list[str]:
    """``name: saved -> current`` for each setting that differs (keys in ``may_change`` are
    allowed to); values are compared as JSON would store them."""
    allowed = set(may_change)
    saved = _flat(dict(saved))
    now = _flat(json.loads(json.dumps(dict(current))))
    out = []
    for key in sorted(set(saved) | set(now)):
        if key.split(".")[0] in allowed:
            continue
        before, after = saved.get(key, "(unset)"), now.get(key, "(unset)")
        if not _same(before, after):
            out.append(f"{key}: {before!r} -> {after!r}")
    return out


def check_settings(path: Path, saved: Mapping[str, Any], current: Mapping[str, Any],
                   may_change: Iterable[str] = ()) -> None:
    """Raise :class:`SettingsChangedError` listing every difference, on one line."""
    diff = settings_differences(saved, current, may_change)
    if diff:
        raise SettingsChangedError(
            f"{path} was written with other settings ({'; '.join(diff)}); resume with the "
            "same settings, or start a new output folder")


def tensors_finite(tensors: Iterable[torch.Tensor]) -> bool:
    """Whether every value of every tensor is finite."""
    return all(bool(torch.isfinite(t.detach()).all()) for t in tensors
               if t.is_floating_point())
