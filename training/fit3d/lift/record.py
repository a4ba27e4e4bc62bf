"""Stage 1's output, Stage 2's input: ``<out>/<scene>/feature_gaussians.safetensors``.

The file holds the Gaussians and the decoder as tensors and, in the safetensors metadata, a
:class:`LiftedMeta`: which scene folder it was lifted from, at which size, on which views,
with which settings. This module is its one writer and reader; keys a newer fit3d-hub adds
survive a round trip (``extra``), and a file of another format version is refused in one
line.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from fit3d_hub.errors import FiT3DError
from fit3d_hub.weights import read_state_dict, save_state_dict
from training.fit3d.lift.gaussians import FeatureGaussians

OUTPUT_NAME = "feature_gaussians.safetensors"
META_KEY = "fit3d_lift"
FORMAT_VERSION = 1
REQUIRED = ("means", "quats", "scales", "opacities", "sh0", "shN", "features", "decoder.weight")
CAMERA_CONVENTION = "opencv world-to-camera (gsplat viewmats)"


class LiftedSceneError(FiT3DError, ValueError):
    """A lifted-scene file that is missing, truncated or not what Stage 1 writes."""


@dataclass
class LiftedMeta:
    """What a lifted file records about how it was made (Stage 2 reads it; nothing else is
    needed to train on the scene)."""

    scene: str
    views: int
    """Frames in the scene when it was lifted (Stage 2 checks the scene still has them)."""
    image_size: tuple[int, int]
    """(width, height) of the renders: the views at ``downscale``."""
    scene_path: str | None = None
    """Absolute path of the scene folder (None in files older than the record)."""
    backbone: str | None = None
    feature_dim: int | None = None
    teacher_dim: int | None = None
    patch_size: int | None = None
    iterations: int | None = None
    backend: str | None = None
    camera_convention: str = CAMERA_CONVENTION
    downscale: float = 1.0
    sh_degree: int | None = None
    training_views: list[int] | None = None
    """The views Stage 1 fitted (None in older files: all)."""
    splits: list[str] | None = None
    """Each frame's split (``train``, ``test``...)."""
    metrics: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    """The :class:`~training.fit3d.lift.config.LiftConfig` it was lifted with."""
    versions: dict[str, str] = field(default_factory=dict)
    lifter: str = "stage1"
    """What made the Gaussians: ``stage1`` (per-scene optimisation, also files older than
    this field) or ``feedforward`` (a trained lifter, ``training.fit3d.feedforward``)."""
    lifter_model: str | None = None
    """The feed-forward lifter's folder (absolute), when ``lifter`` is ``feedforward``."""
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)
    """Keys this version does not know, kept for a round trip."""

    def to_json(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "extra"}
        out["image_size"] = list(self.image_size)
        return {**out, **self.extra}

    @classmethod
    def from_json(cls, raw: Any, where: str) -> LiftedMeta:
        """Parse the metadata of ``where``; a missing or mistyped field is one line."""
        if not isinstance(raw, dict):
            raise LiftedSceneError(f"{where}: '{META_KEY}' metadata is not an object")
        version = raw.get("format_version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise LiftedSceneError(f"{where}: lifted-file format {version!r}; this fit3d-hub "
                                   f"reads format {FORMAT_VERSION} (re-run training.fit3d.lift)")
        for key, kind in (("scene", str), ("views", int)):
            if not isinstance(raw.get(key), kind) or isinstance(raw.get(key), bool):
                raise LiftedSceneError(f"{where}: metadata field '{key}' must be a "
                                       f"{kind.__name__}; got {raw.get(key)!r}")
        size = raw.get("image_size")
        if (not isinstance(size, list) or len(size) != 2
                or not all(isinstance(v, int) and v > 0 for v in size)):
            raise LiftedSceneError(f"{where}: metadata field 'image_size' must be [width, "
                                   f"height]; got {size!r}")
        known = {f.name for f in fields(cls)} - {"extra"}
        values = {k: v for k, v in raw.items() if k in known}
        values["image_size"] = (int(size[0]), int(size[1]))
        values["downscale"] = float(raw.get("downscale", 1.0))
        return cls(**values, extra={k: v for k, v in raw.items() if k not in known})

    @property
    def all_splits(self) -> list[str]:
        """Each frame's split; files older than the record are all ``train``."""
        return self.splits or ["train"] * self.views


def output_path(output_dir: str | Path, scene_name: str) -> Path:
    return Path(output_dir) / scene_name / OUTPUT_NAME


def save_lifted(path: str | Path, gaussians: FeatureGaussians, meta: LiftedMeta) -> Path:
    """Write atomically: the file is either complete (with metadata) or absent."""
    return save_state_dict(gaussians.state_tensors(), path,
                           metadata={META_KEY: json.dumps(meta.to_json())})


def read_meta(path: str | Path) -> LiftedMeta:
    """The record of a finished lifted scene; raises if the file is absent or unreadable."""
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
        raise LiftedSceneError(f"{path}: no '{META_KEY}' metadata; not written by "
                               "training.fit3d.lift")
    missing = [k for k in REQUIRED if k not in keys]
    if missing:
        raise LiftedSceneError(f"{path}: lacks tensors {missing}")
    try:
        decoded = json.loads(raw)
    except json.JSONDecodeError as err:
        raise LiftedSceneError(f"{path}: '{META_KEY}' metadata is not JSON ({err})") from None
    return LiftedMeta.from_json(decoded, str(path))


def is_finished(path: str | Path) -> bool:
    try:
        read_meta(path)
    except LiftedSceneError:
        return False
    return True


def load_lifted(path: str | Path, device: torch.device | str = "cpu"
                ) -> tuple[FeatureGaussians, LiftedMeta]:
    meta = read_meta(path)
    model = FeatureGaussians.from_state_tensors(read_state_dict(path))
    return model.to(device), meta
