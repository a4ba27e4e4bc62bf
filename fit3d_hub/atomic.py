"""Files that are either complete or untouched: every output this project writes goes here.

A writer fills a temporary file beside the target and renames it over the target only once
it is complete (and flushed to disk), so a reader never sees a half-written file, a killed
writer leaves the old file intact, and a full disk (or ``ulimit -f``) gives one
:class:`OutputWriteError` line naming the file instead of a truncated output.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fit3d_hub.errors import OutputWriteError


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _stale(name: str) -> bool:
    """Whether a temporary of ours (``...-<pid>-...``) belongs to a writer that is gone."""
    try:
        pid = int(name.rsplit(".tmp-", 1)[1].split("-")[0])
    except (IndexError, ValueError):
        return False
    return pid != os.getpid() and not _alive(pid)


def remove_stale_temporaries(folder: Path) -> None:
    """Delete the temporaries that killed writers left in ``folder`` (hidden, named after
    their writer's process, which no longer exists)."""
    if not folder.is_dir():
        return
    for entry in folder.glob(".*.tmp-*"):
        if _stale(entry.name):
            target = folder / entry.name[1:].rsplit(".old.tmp-", 1)[0]
            if ".old.tmp-" in entry.name and not target.exists():
                entry.rename(target)  # killed between the two renames of a replacement
            elif entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
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
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.tmp-{os.getpid()}-", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        yield tmp
        # mkstemp (and safetensors) create private 0600 files; use what open() would give.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
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
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
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
            old = path.parent / f".{path.name}.old.tmp-{os.getpid()}"
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(path)
    except OSError as err:
        raise _write_error(path, err, "folder") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
