"""Training checkpoints that load without running code: safetensors and JSON, nothing else.

A checkpoint is a folder holding ``tensors.safetensors`` (weights, optimizer moments, RNG
states: every tensor) and ``state.json`` (progress, the settings of the run, optimizer
hyper-parameters, NumPy generator states). It is written into a hidden folder and renamed
when complete, so a folder with the final name is whole. Reading never unpickles: a
checkpoint copied from someone else cannot run code here, and a damaged or planted file is
refused with one line naming it.

:class:`Checkpointer` is the one checkpointer of every resumable loop (FiT3D's Stage 1 and
Stage 2, the equivariance method, the linear probe): it saves and restores named stateful
parts (weights, optimizers, generators, loop progress) and checks the run's settings.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from fit3d_hub.atomic import atomic_directory
from fit3d_hub.errors import CheckpointError, SettingsChangedError, TrainingStopped
from fit3d_hub.jsonio import read_json_object
from fit3d_hub.weights import load_strict, write_safetensors

TENSORS = "tensors.safetensors"
STATE = "state.json"
FORMAT = "fit3d-hub training checkpoint"
VERSION = 2
"""2: named parts (``parts`` in state.json, ``<part>.<key>`` tensors); 1 was read by three
loops of their own and is refused with a line saying so."""
PREFIX = "step_"


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
    if state.get("version") != VERSION:
        raise CheckpointError(f"{state_path}: checkpoint version {state.get('version')!r}, "
                              f"this fit3d-hub reads version {VERSION}; finish that run with the "
                              "fit3d-hub that started it, or start a new output folder")
    for key in ("settings", "parts", "progress"):
        if not isinstance(state.get(key, {}), dict):
            raise CheckpointError(f"{state_path}: field {key!r} must be an object; got "
                                  f"{type(state[key]).__name__}")
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

def _key(prefix: str, rest: str) -> str:
    return f"{prefix}.{rest}" if prefix else rest


def optimizer_tensors(optimizer: torch.optim.Optimizer, prefix: str = ""
                      ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer's state dict split into tensors (``prefix.<param>.<name>``) and JSON."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entries in sd["state"].items():
        for name, value in entries.items():
            if torch.is_tensor(value):
                tensors[_key(prefix, f"{index}.{name}")] = value
            else:
                scalars.setdefault(str(index), {})[name] = value
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()}
              for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def load_optimizer(optimizer: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor],
                   saved: Mapping[str, Any], prefix: str = "") -> None:
    """Inverse of :func:`optimizer_tensors`."""
    state: dict[int, dict[str, Any]] = {}
    head = _key(prefix, "")
    try:
        for key, value in tensors.items():
            if key.startswith(head):
                index, name = key[len(head):].split(".", 1)
                state.setdefault(int(index), {})[name] = value
        for index, entries in saved.get("scalars", {}).items():
            state.setdefault(int(index), {}).update(entries)
    except (ValueError, TypeError, AttributeError) as err:
        raise CheckpointError(f"optimizer state is malformed ({err})") from None
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for index, entries in state.items():
        if not 0 <= index < len(params):
            raise CheckpointError(f"optimizer state of parameter {index}; this run has "
                                  f"{len(params)}")
        for name, value in entries.items():
            # moments are shaped like their parameter (PyTorch would not check)
            if torch.is_tensor(value) and value.dim() > 0 and value.shape != params[index].shape:
                raise CheckpointError(f"optimizer {name} of parameter {index} has shape "
                                      f"{tuple(value.shape)}, the parameter "
                                      f"{tuple(params[index].shape)}")
    try:
        groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()}
                  for g in saved["param_groups"]]
    except (KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(f"optimizer hyper-parameters are malformed ({err})") from None
    # every hyper-parameter of this run's optimizer, of the same kind (a learning rate
    # saved as a string would only fail at the first step)
    if len(groups) != len(optimizer.param_groups):
        raise CheckpointError(f"optimizer has {len(groups)} parameter groups; this run has "
                              f"{len(optimizer.param_groups)}")
    for i, (group, current) in enumerate(zip(groups, optimizer.param_groups, strict=True)):
        for key, value in current.items():
            if key != "params" and (key not in group or not _same_kind(value, group[key])):
                raise CheckpointError(f"optimizer group {i}: hyper-parameter {key!r} is "
                                      f"{group.get(key, '(missing)')!r}")
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError, RuntimeError, TypeError) as err:
        raise CheckpointError(f"optimizer state {prefix!r} does not fit this run ({err})") \
            from None


# random number generators -------------------------------------------------------------------

def torch_rng_tensors(prefix: str = "") -> dict[str, torch.Tensor]:
    """The CPU generator's state and every CUDA device's."""
    out = {_key(prefix, "cpu"): torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[_key(prefix, f"cuda.{i}")] = s
    return out


def restore_torch_rng(tensors: Mapping[str, torch.Tensor], prefix: str = "") -> None:
    current = torch.get_rng_state()
    if _key(prefix, "cpu") in tensors:
        saved = tensors[_key(prefix, "cpu")]
        if saved.shape != current.shape or saved.dtype != current.dtype:
            raise CheckpointError(f"CPU generator state has {saved.numel()} {saved.dtype} "
                                  f"values; this PyTorch's has {current.numel()} "
                                  f"{current.dtype}")
        try:
            torch.set_rng_state(saved)
        except RuntimeError as err:  # the right size, but not a generator state
            raise CheckpointError(f"CPU generator state is damaged ({err})") from None
    if torch.cuda.is_available():
        states = [tensors[_key(prefix, f"cuda.{i}")] for i in range(torch.cuda.device_count())
                  if _key(prefix, f"cuda.{i}") in tensors]
        if len(states) == torch.cuda.device_count():
            if any(a.shape != b.shape for a, b in zip(states, torch.cuda.get_rng_state_all(),
                                                     strict=True)):
                raise CheckpointError("CUDA generator states have the wrong size")
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


# the checkpointer ---------------------------------------------------------------------------

class Stateful(Protocol):
    """A named part of a training run's state: its tensors and its JSON."""

    finite: bool
    """Whether a non-finite tensor of it stops the save (weights do; moments may not)."""

    def state(self) -> tuple[dict[str, torch.Tensor], Any]: ...

    def load(self, tensors: Mapping[str, torch.Tensor], saved: Any) -> None: ...


class ModuleState:
    """A module's weights (loaded strictly); a checkpoint with a NaN or Inf in them is not
    written."""

    finite = True

    def __init__(self, module: torch.nn.Module):
        self.module = module

    def state(self) -> tuple[dict[str, torch.Tensor], Any]:
        return dict(self.module.state_dict()), None

    def load(self, tensors: Mapping[str, torch.Tensor], saved: Any) -> None:
        load_strict(self.module, dict(tensors), "weights")


class OptimizerState:
    """An optimizer's moments (tensors) and hyper-parameters (JSON)."""

    finite = False

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.optimizer = optimizer

    def state(self) -> tuple[dict[str, torch.Tensor], Any]:
        return optimizer_tensors(self.optimizer, "")

    def load(self, tensors: Mapping[str, torch.Tensor], saved: Any) -> None:
        load_optimizer(self.optimizer, tensors, saved, "")


class TorchRNGState:
    """The CPU generator and every CUDA device's."""

    finite = False

    def state(self) -> tuple[dict[str, torch.Tensor], Any]:
        return torch_rng_tensors(""), None

    def load(self, tensors: Mapping[str, torch.Tensor], saved: Any) -> None:
        restore_torch_rng(tensors, "")


class NumpyRNGState:
    finite = False

    def __init__(self, rng: np.random.Generator):
        self.rng = rng

    def state(self) -> tuple[dict[str, torch.Tensor], Any]:
        return {}, numpy_rng_state(self.rng)

    def load(self, tensors: Mapping[str, torch.Tensor], saved: Any) -> None:
        restore_numpy_rng(self.rng, saved)


class DictState:
    """A dict of tensors and JSON values (a densification strategy's accumulators, a loop's
    progress), updated in place on load."""

    finite = False

    def __init__(self, values: dict[str, Any], device: torch.device | str | None = None):
        self.values, self.device = values, device

    def state(self) -> tuple[dict[str, torch.Tensor], Any]:
        tensors = {k: v for k, v in self.values.items() if torch.is_tensor(v)}
        return tensors, {k: v for k, v in self.values.items() if not torch.is_tensor(v)}

    def load(self, tensors: Mapping[str, torch.Tensor], saved: Any) -> None:
        saved = saved or {}
        if not isinstance(saved, dict):
            raise CheckpointError(f"expected an object; got {type(saved).__name__}")
        for key, value in self.values.items():
            if torch.is_tensor(value):
                if key not in tensors:
                    raise CheckpointError(f"tensor {key!r} is missing")
            elif key not in saved:
                raise CheckpointError(f"field {key!r} is missing")
            elif not _same_kind(value, saved[key]):
                raise CheckpointError(f"field {key!r} is {saved[key]!r}; expected a "
                                      f"{type(value).__name__}")
        self.values.update(saved)
        self.values.update({k: v.to(self.device) if self.device is not None else v
                            for k, v in tensors.items()})


class DataclassState:
    """A dataclass of JSON values (a loop's progress), updated in place on load."""

    finite = False

    def __init__(self, obj: Any):
        self.obj = obj

    def state(self) -> tuple[dict[str, torch.Tensor], Any]:
        return {}, dataclasses.asdict(self.obj)

    def load(self, tensors: Mapping[str, torch.Tensor], saved: Any) -> None:
        known = {f.name: getattr(self.obj, f.name) for f in dataclasses.fields(self.obj)}
        if not isinstance(saved, dict) or set(saved) != set(known):
            raise CheckpointError(f"expected the fields {sorted(known)}; got "
                                  f"{sorted(saved) if isinstance(saved, dict) else saved!r}")
        for key, value in saved.items():
            if not _same_kind(known[key], value) or (isinstance(value, int) and value < 0):
                raise CheckpointError(f"field {key!r} is {value!r}; expected a non-negative "
                                      f"{type(known[key]).__name__}")
        for key, value in saved.items():
            setattr(self.obj, key, value)


def _same_kind(current: Any, saved: Any) -> bool:
    """Whether a saved JSON value can stand for ``current`` (ints for ints, numbers for
    floats, the same container type)."""
    if isinstance(current, bool) or isinstance(saved, bool):
        return isinstance(current, bool) and isinstance(saved, bool)
    if isinstance(current, int):
        return isinstance(saved, int)
    if isinstance(current, float):
        return isinstance(saved, (int, float))
    if current is None:
        return True
    return isinstance(saved, type(current)) or (isinstance(current, tuple)
                                                and isinstance(saved, list))


class NonFiniteStateError(TrainingStopped):
    """A part that must be finite (weights) is not: nothing was saved."""


@dataclass
class Checkpointer:
    """Resumable training checkpoints of a run: named stateful parts, saved into
    ``directory/step_NNNNNNNN/`` by :func:`write_checkpoint` and restored in place.

    ``shared`` parts are the same on every process (weights, optimizer: saved from the main
    one); ``per_process`` parts (generators) are gathered from each process and each process
    gets its own back. ``settings`` is the run's record: a checkpoint written with other
    settings (outside ``may_change``) is refused. With an Accelerate ``accelerator`` every
    process must call :meth:`save` and :meth:`restore`.
    """

    directory: Path
    settings: Mapping[str, Any]
    may_change: tuple[str, ...] = ()
    keep: int = 1
    accelerator: Any = None
    prefix: str = PREFIX

    @property
    def rank(self) -> int:
        return self.accelerator.process_index if self.accelerator is not None else 0

    def latest(self) -> Path | None:
        return latest(self.directory, self.prefix)

    def last_good(self) -> str:
        """The newest checkpoint, for error messages."""
        found = self.latest()
        return str(found) if found is not None else "none (no checkpoint was written yet)"

    def path(self, step: int) -> Path:
        return Path(self.directory) / f"{self.prefix}{step:08d}"

    def check(self) -> None:
        """Refuse, before any work, a checkpoint written with other settings."""
        found = self.latest()
        if found is not None:
            check_settings(found, read_state(found).get("settings", {}), self.settings,
                           self.may_change)

    def save(self, step: int, shared: Mapping[str, Stateful],
             per_process: Mapping[str, Stateful] | None = None) -> Path:
        """Write the checkpoint of ``step`` (then keep the newest ``keep``); raises
        :class:`NonFiniteStateError` (nothing written) when a weight is not finite."""
        states = {name: part.state() for name, part in shared.items()}
        for name, part in shared.items():
            if part.finite and not tensors_finite(states[name][0].values()):
                what = "weights" if name == "model" else name
                raise NonFiniteStateError(
                    f"{what} became non-finite by step {step}; not saved. The last good "
                    f"checkpoint is {self.last_good()}")
        mine = {name: part.state() for name, part in (per_process or {}).items()}
        everyone = self._gather(mine)
        target = self.path(step)
        if self.rank == 0:
            tensors: dict[str, torch.Tensor] = {}
            parts: dict[str, Any] = {}
            for name, (values, saved) in states.items():
                tensors.update({f"{name}.{k}": v for k, v in values.items()})
                parts[name] = saved
            for name in mine:
                parts[name] = []
                for rank, states in enumerate(everyone):
                    values, saved = states[name]
                    tensors.update({f"{name}.{rank}.{k}": v for k, v in values.items()})
                    parts[name].append(saved)
            write_checkpoint(target, tensors, {"progress": {"step": step},
                                               "settings": dict(self.settings),
                                               "parts": parts})
            prune(self.directory, self.prefix, self.keep)
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()
        return target

    def save_final(self, step: int, shared: Mapping[str, Stateful],
                   per_process: Mapping[str, Stateful] | None = None) -> None:
        """The end-of-run checkpoint, unless the newest one is of this step already."""
        found = self.latest()
        if found is None or found.name != self.path(step).name:
            self.save(step, shared, per_process)

    def open(self) -> SavedRun | None:
        """The newest checkpoint, read and checked against the settings (None: none)."""
        found = self.latest()
        if found is None:
            return None
        saved = SavedRun(read_checkpoint(found, self.settings, self.may_change), self.rank)
        step = saved.checkpoint.state.get("progress", {}).get("step")  # an object: read_state
        # progress is checked against the checkpoint itself: its folder is named by its step
        if not isinstance(step, int) or isinstance(step, bool) or step < 0 \
                or found.name != self.path(step).name:
            raise CheckpointError(f"{found}: progress step {step!r} does not match the "
                                  f"checkpoint's name; the state was edited or damaged")
        return saved

    def restore(self, shared: Mapping[str, Stateful],
                per_process: Mapping[str, Stateful] | None = None) -> int | None:
        """Load the newest checkpoint into the parts; returns its step (None: none)."""
        saved = self.open()
        if saved is None:
            return None
        for name, part in shared.items():
            saved.load(name, part)
        for name, part in (per_process or {}).items():
            saved.load(name, part, per_process=True)
        return saved.step

    def remove(self) -> None:
        """Drop the checkpoints (the run's output supersedes them)."""
        shutil.rmtree(self.directory, ignore_errors=True)

    def _gather(self, mine: dict[str, Any]) -> list[dict[str, Any]]:
        if self.accelerator is None or self.accelerator.num_processes == 1:
            return [mine]
        from accelerate.utils import gather_object

        return gather_object([mine])


@dataclass
class SavedRun:
    """One read checkpoint, loaded part by part (a part may need another restored first:
    Stage 1 builds its optimizers around the restored Gaussians)."""

    checkpoint: Checkpoint
    rank: int = 0

    @property
    def step(self) -> int:
        return int(self.checkpoint.state["progress"]["step"])

    def load(self, name: str, part: Stateful, per_process: bool = False) -> None:
        """Load part ``name`` (this process's copy of a per-process part) into ``part``."""
        state, path = self.checkpoint.state.get("parts", {}), self.checkpoint.path
        try:
            saved = state[name][self.rank] if per_process else state[name]
        except (KeyError, IndexError, TypeError):
            raise CheckpointError(f"{path}: holds no state {name!r}"
                                  f"{f' of process {self.rank}' if per_process else ''} "
                                  "for this run") from None
        head = f"{name}.{self.rank}." if per_process else f"{name}."
        tensors = {k[len(head):]: v for k, v in self.checkpoint.tensors.items()
                   if k.startswith(head)}
        try:
            part.load(tensors, saved)
        except CheckpointError as err:
            raise CheckpointError(f"{path}: {name}: {err}") from None
