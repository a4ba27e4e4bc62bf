"""One error type per failure, all under :class:`FiT3DError`, each with a one-line message."""

from __future__ import annotations


class FiT3DError(Exception):
    """Base class of every error this package raises on purpose."""


class UnknownModelError(FiT3DError, ValueError):
    """A name that is neither a registry entry, a hub repo id nor a local directory."""


class InputShapeError(FiT3DError, ValueError):
    """An input tensor of the wrong rank, channel count or spatial size."""


class RepoFormatError(FiT3DError, ValueError):
    """A model directory or hub repo whose config.json is missing or malformed."""


class CheckpointError(FiT3DError, ValueError):
    """A weights file that cannot be read, or whose keys or shapes do not fit the model."""


class UnsafeCheckpointError(CheckpointError):
    """A pickled checkpoint that would run code (or load non-tensor objects) when unpickled."""


class SettingsChangedError(CheckpointError):
    """``--resume`` with settings other than those the checkpoint was written with."""


class HubFileNotFoundError(FiT3DError, FileNotFoundError):
    """The hub answered, and the repo, revision or file does not exist (or is gated)."""


class NotCachedError(FiT3DError, FileNotFoundError):
    """Files needed offline (or with the hub unreachable) that are not in the local cache."""

    def __init__(self, message: str, missing: list[str], command: str | None = None):
        super().__init__(message)
        self.missing = missing
        self.command = command


class OutputWriteError(FiT3DError, OSError):
    """An output file that could not be written (disk full, file too large, permissions);
    the previous file, if any, is left as it was."""


DATA_ERRORS: tuple[type[BaseException], ...] = (CheckpointError, OutputWriteError)
"""Failures of the data a command reads or writes (exit 1), not of how it was called."""


def exit_status(err: BaseException, data_errors: tuple[type[BaseException], ...] = DATA_ERRORS
                ) -> int:
    """The CLIs' exit status for a refusal: 1 for bad data (a corrupt checkpoint, a full
    disk, ``data_errors``), 2 for bad usage (changed settings on resume, a wrong flag)."""
    if isinstance(err, SettingsChangedError):
        return 2
    return 1 if isinstance(err, data_errors) else 2
