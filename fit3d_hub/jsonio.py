"""Reading JSON files with one-line errors that name the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fit3d_hub.errors import RepoFormatError


def read_json_object(path: str | Path, *, missing: str = "no such file",
                     error: type[Exception] = RepoFormatError) -> dict[str, Any]:
    """The top-level JSON object of ``path``; ``error`` (naming the file) if absent or bad."""
    from fit3d_hub.budget import check_bytes

    path = Path(path)
    try:
        # parsed JSON takes several times its text in memory
        check_bytes(path.stat().st_size * 8, str(path), "parsing this JSON file")
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{path}: {missing}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise error(f"{path}: malformed JSON ({err})") from None
    except RecursionError:
        raise error(f"{path}: malformed JSON (nested too deeply)") from None
    except OSError as err:
        raise error(f"{path}: not a readable file ({err.strerror or err})") from None
    if not isinstance(raw, dict):
        raise error(f"{path}: expected a JSON object at the top level")
    return raw
