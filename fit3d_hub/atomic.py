"""Files that are either complete or untouched: every output this project writes goes here.

A writer fills a temporary file beside the target and renames it over the target only once
it is complete (and flushed to disk), so a reader never sees a half-written file, a killed
writer leaves the old file intact, and a full disk (or ``ulimit -f``) gives one
:class:`OutputWriteError` line naming the file instead of a truncated output.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fit3d_hub.errors import FiT3DError, OutputWriteError, RepoFormatError

TMP = ".fit3d-tmp-"
"""What every temporary this project writes has in its name (``.<target>.fit3d-tmp-<pid>-
...``): cleanup removes those of writers that are gone, and nothing else."""
OLD = ".fit3d-old-"
JOURNAL = ".fit3d-commit.json"
"""A folder's pending multi-file change: written once every new file is complete, applied,
then deleted; a reader or the next writer finishes one that a killed writer left."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _stale(name: str, marker: str = TMP) -> bool:
    """Whether a temporary of ours (``...<marker><pid>-...``) belongs to a writer that is
    gone."""
    try:
        pid = int(name.rsplit(marker, 1)[1].split("-")[0])
    except (IndexError, ValueError):
        return False
    return pid != os.getpid() and not _alive(pid)


def remove_stale_temporaries(folder: Path) -> None:
    """Finish a multi-file change a killed writer committed to (:func:`finish_commit`), then
    delete the temporaries killed writers left in ``folder``: hidden, named with this
    project's marker and after a writer process that no longer exists. Nothing else."""
    if not folder.is_dir():
        return
    finish_commit(folder)
    for entry in folder.glob(f".*{OLD}*"):
        if _stale(entry.name, OLD):
            target = folder / entry.name[1:].rsplit(OLD, 1)[0]
            if not target.exists():
                entry.rename(target)  # killed between the two renames of a replacement
            else:
                shutil.rmtree(entry, ignore_errors=True)
    for entry in folder.glob(f".*{TMP}*"):
        if _stale(entry.name):
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


def _temporary(folder: Path, name: str) -> Path:
    """A new empty hidden file in ``folder`` named as this project's temporaries of ``name``
    are (what cleanup recognises)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{name}{TMP}{os.getpid()}-", dir=folder)
    os.close(fd)
    return Path(tmp)


def _fsync(path: Path) -> None:
    """Flush a file, or a folder's entries, to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_error(path: Path, err: OSError, what: str) -> OutputWriteError:
    """One line for a failed write (ours passed through), saying the old ``what`` is kept."""
    if isinstance(err, OutputWriteError):
        return err
    return OutputWriteError(f"{path}: could not write ({err.strerror or err}); any previous "
                            f"{what} there is unchanged")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary file beside ``path``; on success it replaces ``path``, else vanishes.

    An ``OSError`` while writing (disk full, file too large, permissions) becomes an
    :class:`OutputWriteError` naming ``path``; the previous ``path`` stays as it was.
    """
    path = Path(path)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path.parent)
        tmp = _temporary(path.parent, path.name)
        yield tmp
        # mkstemp (and safetensors) create private 0600 files; use what open() would give.
        os.chmod(tmp, 0o666 & ~_umask())
        _fsync(tmp)
        os.replace(tmp, path)
    except OSError as err:
        raise _write_error(path, err, "file") from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write a UTF-8 text file atomically."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write bytes atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
    return Path(path)


def save_image_atomic(path: str | Path, image, **options) -> Path:
    """Save a PIL image atomically, its format taken from the suffix of ``path``."""
    buffer = io.BytesIO()
    image.save(buffer, format=_image_format(Path(path)), **options)
    return write_bytes_atomic(path, buffer.getvalue())


def _image_format(path: Path) -> str:
    from PIL import Image

    Image.init()
    try:
        return Image.EXTENSION[path.suffix.lower()]
    except KeyError:
        raise OutputWriteError(f"{path}: unknown image type {path.suffix!r}; use .png or "
                               ".jpg") from None


@contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path`` whole."""
    path = Path(path)
    tmp = path.parent / f".{path.name}{TMP}{os.getpid()}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path.parent)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                _fsync(f)
        if path.exists():
            old = path.parent / f".{path.name}{OLD}{os.getpid()}"
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(path)
    except OSError as err:
        raise _write_error(path, err, "folder") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class FileSet:
    """The files of one multi-file change (:func:`atomic_files`): :meth:`path` gives where to
    write each, :meth:`delete` names files the change removes."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.renames: list[tuple[str, str]] = []
        self.deletes: list[str] = []

    def path(self, name: str) -> Path:
        """A temporary to write ``name`` into; it takes that name when the change commits."""
        tmp = _temporary(self.folder, name)
        self.renames.append((tmp.name, name))
        return tmp

    def delete(self, name: str) -> None:
        self.deletes.append(name)


def _apply(folder: Path, journal: dict) -> None:
    """Do a journal's renames and deletions; each step is idempotent, so a change cut short
    by a kill is finished by doing them all again."""
    for tmp, name in journal["renames"]:
        if (folder / tmp).exists():
            os.replace(folder / tmp, folder / name)
    for name in journal["deletes"]:
        (folder / name).unlink(missing_ok=True)
    _fsync(folder)  # the renames themselves reach the disk


def _read_journal(folder: Path) -> dict | None:
    try:
        journal = json.loads((folder / JOURNAL).read_text(encoding="utf-8"))
        pairs = [(str(a), str(b)) for a, b in journal["renames"]]
        deletes = [str(n) for n in journal["deletes"]]
        pid = int(journal["pid"])
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):
        raise OutputWriteError(f"{folder / JOURNAL}: not a fit3d-hub commit record; remove "
                               "it by hand if no fit3d-hub process is writing there") from None
    for name in [n for pair in pairs for n in pair] + deletes:
        if "/" in name or name in ("", ".", ".."):  # a record of ours names files here only
            raise OutputWriteError(f"{folder / JOURNAL}: names a file outside {folder}")
    return {"renames": pairs, "deletes": deletes, "pid": pid}


def pending_commit(folder: Path) -> bool:
    """Whether ``folder`` holds a multi-file change not yet applied."""
    return (Path(folder) / JOURNAL).exists()


def finish_commit(folder: Path) -> bool:
    """Apply the multi-file change a killed writer committed to in ``folder`` (its new files
    were all complete when it did); returns whether one was applied. A change whose writer
    is still running is left to it."""
    folder = Path(folder)
    journal = _read_journal(folder)
    if journal is None or (journal["pid"] != os.getpid() and _alive(journal["pid"])):
        return False
    try:
        _apply(folder, journal)
        (folder / JOURNAL).unlink(missing_ok=True)
    except OSError as err:
        raise _write_error(folder, err, "repo") from None
    return True


@contextmanager
def atomic_files(folder: str | Path) -> Iterator[FileSet]:
    """Write several files of ``folder`` as one change: all the new ones or none of them.

    Each file is written to a temporary (:meth:`FileSet.path`); once every one is complete
    and on disk, a journal naming the renames is written atomically, then applied and
    removed. A kill before the journal leaves the old files (and stale temporaries); a kill
    after it leaves a change that :func:`finish_commit` completes, which the next writer
    and every reader of a repo (:func:`finish_interrupted_save`) call first.
    """
    folder = Path(folder)
    files = FileSet(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(folder)
        yield files
        for tmp, _ in files.renames:
            os.chmod(folder / tmp, 0o666 & ~_umask())
            _fsync(folder / tmp)
        journal = {"pid": os.getpid(), "renames": files.renames, "deletes": files.deletes}
        write_text_atomic(folder / JOURNAL, json.dumps(journal))
        _apply(folder, journal)
        (folder / JOURNAL).unlink()
    except OSError as err:
        raise _write_error(folder, err, "repo") from None
    finally:
        if not (folder / JOURNAL).exists():
            for tmp, _ in files.renames:
                (folder / tmp).unlink(missing_ok=True)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def finish_interrupted_save(directory: Path) -> None:
    """Complete a save that a kill cut short after it had committed (all new files written);
    a folder this process cannot finish it in is refused in one line."""
    if not pending_commit(directory):
        return
    try:
        finish_commit(directory)
    except FiT3DError as err:
        raise RepoFormatError(f"{directory}: a save was interrupted and cannot be finished "
                              f"here ({err}); save the repo again") from None
    if pending_commit(directory):
        raise RepoFormatError(f"{directory}: another process is saving this repo now; load "
                              "it when that save is done")
