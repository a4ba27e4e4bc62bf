"""Reading and writing state dicts: safetensors everywhere, pickles only with weights_only=True."""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from fit3d_hub.atomic import atomic_path
from fit3d_hub.budget import check_bytes
from fit3d_hub.errors import CheckpointError, UnsafeCheckpointError

PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
_WRAPPER_KEYS = ("state_dict", "model")
_MAX_KEYS_SHOWN = 6
T = TypeVar("T")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a state dict on CPU from ``.safetensors`` or a pickled ``.pth``/``.pt``/``.bin``.

    Pickles are read with ``torch.load(weights_only=True)``: a file that would run code on
    unpickling raises :class:`UnsafeCheckpointError` and nothing in it runs.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such weights file")
    if path.suffix == ".safetensors":
        check_bytes(path.stat().st_size, str(path), "reading these weights")
        try:
            state = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(
                f"{path}: not a readable safetensors file (truncated or corrupt?): {err}"
            ) from None
        return state
    if path.suffix in PICKLE_SUFFIXES:
        return _read_pickle(path)
    raise CheckpointError(
        f"{path}: unknown weights format; expected .safetensors or one of "
        f"{', '.join(PICKLE_SUFFIXES)}"
    )


def read_pickle_object(path: str | Path) -> object:
    """``torch.load(path, weights_only=True)`` on CPU: containers of tensors and plain values
    only; anything that would run code is :class:`UnsafeCheckpointError`, a damaged file
    :class:`CheckpointError`, each one line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    check_bytes(_unpacked_bytes(path), str(path), "unpacking this pickle")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UnsafeCheckpointError(
            f"{path}: refused to unpickle: the file holds objects other than tensors "
            f"(weights_only=True): {first}"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as err:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): "
                              f"{str(err).splitlines()[0] if str(err) else type(err).__name__}"
                              ) from None


def _unpacked_bytes(path: Path) -> int:
    """What a pickle takes in memory once read: a zip archive (PyTorch's format) by the sizes
    its directory declares, so a deflate bomb is caught before it inflates; an old-style
    pickle by its file size."""
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            return max(size, sum(info.file_size for info in archive.infolist()))
    except (zipfile.BadZipFile, OSError, ValueError):
        return size


def read_header(path: str | Path) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """Tensor names and shapes, and the metadata, from a safetensors header alone (no
    tensor is read)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            names = fh.keys()
            return ({k: tuple(fh.get_slice(k).get_shape()) for k in names},
                    dict(fh.metadata() or {}))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such weights file") from None
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file (truncated or "
                              f"corrupt?): {err}") from None


def check_nonfinite(state: Mapping[str, torch.Tensor], source: str) -> None:
    """Refuse weights holding NaN or Inf, naming the first tensor that does."""
    for key, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"{source}: tensor {key!r} holds NaN or Inf values; "
                                  "these weights would give non-finite features")


def _read_pickle(path: Path) -> dict[str, torch.Tensor]:
    obj = read_pickle_object(path)
    for key in _WRAPPER_KEYS:
        if isinstance(obj, Mapping) and set(obj) == {key}:
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a state dict (name -> tensor); "
                              f"got {type(obj).__name__}")
    return {str(k): v for k, v in obj.items()}


def drop_prefixes(state: Mapping[str, T], prefixes: Iterable[str]) -> dict[str, T]:
    """State dict (or its header's shapes) without the keys under any of ``prefixes`` (e.g. a
    classifier ``head``)."""
    dotted = tuple(p + "." for p in prefixes if p)
    return {k: v for k, v in state.items() if not k.startswith(dotted)}


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_KEYS_SHOWN])
    extra = len(keys) - _MAX_KEYS_SHOWN
    return shown + (f" (+{extra} more)" if extra > 0 else "")


def check_shapes(expected: Mapping[str, tuple[int, ...]], found: Mapping[str, tuple[int, ...]],
                 source: str) -> None:
    """Raise :class:`CheckpointError` naming the keys and shapes of ``found`` (a checkpoint)
    that differ from ``expected`` (the model)."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys: {_listing(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_listing(unexpected)}")
        raise CheckpointError(f"{source}: checkpoint does not match the model; " + "; ".join(parts))
    wrong = [f"{k} {tuple(found[k])} vs {tuple(v)}"
             for k, v in expected.items() if tuple(found[k]) != tuple(v)]
    if wrong:
        raise CheckpointError(f"{source}: checkpoint shapes do not match the model "
                              f"(checkpoint vs model): {_listing(wrong)}")


def load_strict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """``model.load_state_dict(state, strict=True)`` with an error naming what does not fit;
    weights with NaN or Inf are refused."""
    check_shapes({k: tuple(v.shape) for k, v in model.state_dict().items()},
                 {k: tuple(v.shape) for k, v in state.items()}, source)
    check_nonfinite(state, source)
    model.load_state_dict(state, strict=True)


def write_safetensors(state: Mapping[str, torch.Tensor], path: str | Path,
                      metadata: Mapping[str, str] | None = None) -> None:
    """Write ``state`` to ``path`` as safetensors (not atomic: callers write a temporary).

    Its I/O errors (disk full) come as ``OSError``, as every other write's do.
    """
    # clone(): safetensors refuses tensors that share storage; the copy is brief and on CPU.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    try:
        save_file(tensors, str(path), metadata=dict(metadata or {}))
    except SafetensorError as err:  # safetensors reports I/O errors as its own type
        raise OSError(str(err)) from None


def save_state_dict(state: Mapping[str, torch.Tensor], path: str | Path,
                    metadata: Mapping[str, str] | None = None) -> Path:
    """Write ``state`` as safetensors atomically."""
    with atomic_path(path) as tmp:
        write_safetensors(state, tmp, metadata)
    return Path(path)
