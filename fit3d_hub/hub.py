"""The one path to the Hugging Face Hub: cache, revisions, offline mode, uploads."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import huggingface_hub
from huggingface_hub import constants, hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from fit3d_hub.errors import HubFileNotFoundError, NotCachedError, UnknownModelError
from fit3d_hub.version import __version__

LIBRARY_NAME = "fit3d-hub"
# training.fit3d.finetune keeps its training checkpoints inside the output repo folder; they are
# for resuming, not for the hub. Hidden files are temporaries of atomic writes.
PUSH_IGNORE = ["checkpoints/**", ".*", "**/.*"]
_TRUE = {"1", "on", "yes", "true"}


@dataclass(frozen=True)
class HubFile:
    """One file of one hub repo at one revision (``None`` = the default branch)."""

    repo_id: str
    filename: str
    revision: str | None = None
    optional: bool = False
    """An optional file that the repo lacks resolves to ``None`` instead of failing."""

    def __str__(self) -> str:
        at = f"@{self.revision}" if self.revision else ""
        return f"{self.repo_id}{at}:{self.filename}"


def offline_mode(local_files_only: bool | None = None) -> bool:
    """``local_files_only`` if given, else ``HF_HUB_OFFLINE`` (read now, not at import)."""
    if local_files_only is not None:
        return bool(local_files_only)
    return constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in _TRUE


def cache_location(cache_dir: str | Path | None) -> str:
    return str(cache_dir) if cache_dir is not None else constants.HF_HUB_CACHE


def _library_version() -> str:
    return __version__


def fetch(
    files: Sequence[HubFile],
    *,
    cache_dir: str | Path | None = None,
    local_files_only: bool | None = None,
    command: str | None = None,
) -> dict[HubFile, Path | None]:
    """Resolve ``files`` to local paths through ``hf_hub_download`` (cache first).

    Offline, every file is looked up in the cache only; whatever is missing is reported in
    one :class:`NotCachedError` that lists all of it and ``command``, the command that
    fetches it. Online, the first failure to reach the hub switches the remaining look-ups
    to the cache, so an unreachable hub costs one round of retries, not one per file.
    """
    offline = offline_mode(local_files_only)
    unreachable = False
    found: dict[HubFile, Path | None] = {}
    missing: list[HubFile] = []
    for f in files:
        try:
            path = hf_hub_download(
                f.repo_id, f.filename, revision=f.revision, cache_dir=cache_dir,
                local_files_only=offline or unreachable, library_name=LIBRARY_NAME,
                library_version=_library_version(),
            )
        except LocalEntryNotFoundError:
            # Raised when the file is not cached and the hub is off limits or unreachable.
            if f.optional:
                found[f] = None
            else:
                missing.append(f)
            unreachable = True
            continue
        except GatedRepoError as err:
            raise HubFileNotFoundError(f"{f}: the repo is gated and this account has no access "
                                       f"({_first_line(err)})") from None
        except RepositoryNotFoundError:
            raise HubFileNotFoundError(f"{f.repo_id}: no such hub repo (or it is private: "
                                       "log in with `hf auth login`)") from None
        except RevisionNotFoundError:
            raise HubFileNotFoundError(f"{f.repo_id}: no revision {f.revision!r}") from None
        except EntryNotFoundError:
            if f.optional:
                found[f] = None
                continue
            raise HubFileNotFoundError(f"{f}: no such file in the repo") from None
        except HFValidationError as err:
            raise UnknownModelError(f"{f.repo_id!r} is not a valid hub repo id: "
                                    f"{_first_line(err)}") from None
        found[f] = Path(path)
    if missing:
        why = ("offline mode is on (HF_HUB_OFFLINE or local_files_only)" if offline
               else "the Hugging Face Hub could not be reached")
        listing = ", ".join(str(f) for f in missing)
        hint = f"; fetch them with: {command}" if command else ""
        raise NotCachedError(
            f"{why} and these files are not in the cache {cache_location(cache_dir)}: "
            f"{listing}{hint}",
            missing=[str(f) for f in missing], command=command,
        )
    return found


def download_command(target: str, *, revision: str | None = None,
                     cache_dir: str | Path | None = None) -> str:
    """The ``fit3d-hub download`` command line that fetches everything ``target`` needs."""
    parts = ["fit3d-hub", "download", target]
    if revision:
        parts += ["--revision", revision]
    if cache_dir is not None:
        parts += ["--cache-dir", str(cache_dir)]
    return " ".join(parts)


def push_directory(
    directory: str | Path,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    create_pr: bool = False,
) -> str:
    """Check ``directory`` loads (:func:`fit3d_hub.repo_format.validate_repo`), then create
    ``repo_id`` if needed and upload it as one commit; returns its URL. A broken repo is
    refused before any network call."""
    from fit3d_hub.repo_format import validate_repo  # needs torch: imported when pushing

    validate_repo(directory)
    api = huggingface_hub.HfApi(token=token, library_name=LIBRARY_NAME,
                                library_version=_library_version())
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    info = api.upload_folder(
        repo_id=repo_id, folder_path=str(directory), repo_type="model", revision=revision,
        commit_message=commit_message or "Upload FiT3D backbone with fit3d-hub",
        create_pr=create_pr, ignore_patterns=PUSH_IGNORE,
    )
    return str(getattr(info, "commit_url", info))


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
