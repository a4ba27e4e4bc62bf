"""Who owns an output folder: a run record and a lock, so two runs never mix.

Every training or probe run claims its ``--output`` before any work: it takes an exclusive
lock (``.fit3d-run.lock``, released by the kernel when the process ends, however it ends)
and writes a run record (``.fit3d-run.json``: command, settings hash, start time, process,
host; ``finished`` once the output is written). Then:

- a second run on a folder another run holds is refused in one line;
- a run without ``--resume`` into a folder holding an earlier run's checkpoints is refused,
  unless ``--overwrite`` (which deletes them) says to start over;
- ``--resume`` of a run that finished, with the same settings, changes nothing.

Both files are hidden, so ``fit3d-hub push`` leaves them out of an uploaded repo.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import socket
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fit3d_hub.atomic import write_text_atomic
from fit3d_hub.checkpoint import PREFIX
from fit3d_hub.errors import UsageError

RECORD = ".fit3d-run.json"
LOCK = ".fit3d-run.lock"


def settings_hash(settings: Mapping[str, Any]) -> str:
    """A short hash of a run's settings as JSON stores them."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_record(output: Path) -> dict[str, Any] | None:
    """The run record of ``output`` (None: none, or unreadable: treated as none)."""
    try:
        record = json.loads((Path(output) / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return record if isinstance(record, dict) else None


def _holder(record: dict[str, Any] | None) -> str:
    if not record:
        return "another process"
    return (f"{record.get('command', 'a run')} (pid {record.get('pid')} on "
            f"{record.get('host')}, started {record.get('started')})")


def _has_checkpoints(checkpoints: Path) -> bool:
    return checkpoints.is_dir() and any(p.is_dir() for p in checkpoints.rglob(f"{PREFIX}*"))


def _write_record(output: Path, record: dict[str, Any]) -> None:
    write_text_atomic(output / RECORD, json.dumps(record, indent=1) + "\n")


@dataclass
class RunClaim:
    """A claimed output folder; :attr:`finished` says the run is already done."""

    output: Path
    record: dict[str, Any]
    finished: bool
    main: bool

    def finish(self) -> None:
        """Record that the run wrote its output (a later ``--resume`` changes nothing)."""
        if self.main:
            self.record = {**self.record, "finished": True,
                           "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            _write_record(self.output, self.record)


@contextmanager
def claim_output(output: str | Path, *, command: str, settings: Mapping[str, Any],
                 resume: bool, checkpoints: str | Path, overwrite: bool = False,
                 accelerator: Any = None) -> Iterator[RunClaim]:
    """Claim ``output`` for one run (see the module's rules), whose checkpoints go to
    ``checkpoints``; every process of a distributed run calls it, the main one holds the
    lock and writes the record."""
    output, checkpoints = Path(output), Path(checkpoints)
    main = accelerator is None or accelerator.is_main_process
    digest = settings_hash(settings)
    handle = None
    try:
        if main:
            output.mkdir(parents=True, exist_ok=True)
            handle = open(output / LOCK, "a+")  # noqa: SIM115 - held for the whole run
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UsageError(f"--output {output}: another run is writing here: "
                                 f"{_holder(read_record(output))}; wait for it to end or "
                                 "choose another --output") from None
        record = read_record(output)
        finished = bool(resume and record and record.get("finished")
                        and record.get("settings_hash") == digest)
        if not resume and _has_checkpoints(checkpoints) and not overwrite:
            raise UsageError(f"--output {output}: holds checkpoints of an earlier run "
                             f"({_holder(record)}); pass --resume to continue it, or "
                             "--overwrite to start over")
        if accelerator is not None:
            accelerator.wait_for_everyone()  # everyone has looked before anything changes
        if main and not finished:
            if not resume and overwrite:
                shutil.rmtree(checkpoints, ignore_errors=True)
            record = {"command": command, "settings_hash": digest,
                      "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "pid": os.getpid(),
                      "host": socket.gethostname(), "finished": False}
            _write_record(output, record)
        if accelerator is not None:
            accelerator.wait_for_everyone()
        yield RunClaim(output, record or {}, finished, main)
    finally:
        if handle is not None:
            handle.close()  # releases the lock
