"""Lifted scenes on disk: ``<out>/<scene>/feature_gaussians.safetensors`` plus metadata."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from fit3d_hub.weights import read_state_dict, save_state_dict
from training.lifting.gaussians import FeatureGaussians

OUTPUT_NAME = "feature_gaussians.safetensors"
META_KEY = "fit3d_lift"
FORMAT_VERSION = 1
REQUIRED = ("means", "quats", "scales", "opacities", "sh0", "shN", "features", "decoder.weight")


class LiftedSceneError(ValueError):
    """A lifted-scene file that is missing, truncated or not what Stage 1 writes."""


def output_path(output_dir: str | Path, scene_name: str) -> Path:
    return Path(output_dir) / scene_name / OUTPUT_NAME


def save_lifted(path: str | Path, gaussians: FeatureGaussians, meta: dict[str, Any]) -> Path:
    """Write atomically: the file is either complete (with metadata) or absent."""
    meta = {"format_version": FORMAT_VERSION, **meta}
    return save_state_dict(gaussians.state_tensors(), path, metadata={META_KEY: json.dumps(meta)})


def read_meta(path: str | Path) -> dict[str, Any]:
    """The metadata of a finished lifted scene; raises if the file is absent or unreadable."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            raw = (fh.metadata() or {}).get(META_KEY)
            keys = set(fh.keys())
    except FileNotFoundError:
        raise LiftedSceneError(f"{path}: missing (was Stage 1 run for this scene?)") from None
    except (SafetensorError, OSError) as err:
        raise LiftedSceneError(f"{path}: not a readable safetensors file ({err})") from None
    if raw is None:
        raise LiftedSceneError(f"{path}: no '{META_KEY}' metadata; not written by training.lift")
    missing = [k for k in REQUIRED if k not in keys]
    if missing:
        raise LiftedSceneError(f"{path}: lacks tensors {missing}")
    return json.loads(raw)


def is_finished(path: str | Path) -> bool:
    try:
        read_meta(path)
    except LiftedSceneError:
        return False
    return True


def load_lifted(path: str | Path, device: torch.device | str = "cpu"
                ) -> tuple[FeatureGaussians, dict[str, Any]]:
    meta = read_meta(path)
    model = FeatureGaussians.from_state_tensors(read_state_dict(path))
    return model.to(device), meta
