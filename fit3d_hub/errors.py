"""One error type per failure, all under :class:`FiT3DError`, each with a one-line message.

Each type says which exit status a command returns for it (``exit_status``): 1 for bad data
(a file, a scene, a checkpoint, a disk), 2 for bad usage (a flag, a name, settings that
differ from the run being resumed). :mod:`fit3d_hub.commandline` is the one place that
turns an error into a line and a status.
"""

from __future__ import annotations


class FiT3DError(Exception):
    """Base class of every error this project raises on purpose."""

    exit_status = 1
    """What a command exits with when this error stops it: 1, bad data."""


class UsageError(FiT3DError, ValueError):
    """A flag or argument with a value the command cannot use; the message names it."""

    exit_status = 2


class UnknownModelError(UsageError):
    """A name that is neither a registry entry, a hub repo id nor a local directory."""


class InputShapeError(FiT3DError, ValueError):
    """An input tensor of the wrong rank, channel count or spatial size."""


class RepoFormatError(FiT3DError, ValueError):
    """A model directory or hub repo whose config.json is missing or malformed."""


class CheckpointError(FiT3DError, ValueError):
    """A weights file that cannot be read, or whose keys or shapes do not fit the model."""


class RepoWeightsError(CheckpointError, RepoFormatError):
    """A repo's weights file that is missing, unreadable or does not fit its config.json."""


class UnsafeCheckpointError(CheckpointError):
    """A pickled checkpoint that would run code (or load non-tensor objects) when unpickled."""


class SettingsChangedError(CheckpointError):
    """``--resume`` with settings other than those the checkpoint was written with."""

    exit_status = 2


class BudgetError(FiT3DError, MemoryError):
    """A file or flag declares more memory than the budget (``FIT3D_HUB_MAX_BYTES``) allows;
    nothing was allocated."""


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


class TrainingStopped(FiT3DError, RuntimeError):
    """Training cannot go on (a non-finite loss or weights); the last good checkpoint is
    kept."""
