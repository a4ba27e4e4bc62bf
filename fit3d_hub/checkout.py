"""Finding the source checkout that holds ``training/`` and ``eval/`` (not part of the wheel)."""

from __future__ import annotations

import sys
from pathlib import Path

from fit3d_hub.errors import FiT3DError


def source_root() -> Path:
    """The repo root of an editable install, put on ``sys.path``; an error for a wheel."""
    root = Path(__file__).resolve().parents[1]
    if not all((root / d).is_dir() for d in ("scenes", "training", "eval")):
        raise FiT3DError("this command needs fit3d-hub's source checkout (scenes/, training/ "
                         "and eval/ are not in the wheel): clone the repository and "
                         "`pip install -e .`")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return root
