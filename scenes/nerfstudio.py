"""nerfstudio ``transforms.json``: shared or per-frame pinhole intrinsics, OpenGL poses."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fit3d_hub.jsonio import read_json_object
from scenes.cameras import Camera, opengl_c2w_to_opencv_w2c
from scenes.points import read_points
from scenes.types import Frame, Scene, SceneError

INTRINSICS = ("fl_x", "fl_y", "cx", "cy", "w", "h")
DISTORTION = ("k1", "k2", "k3", "k4", "p1", "p2")
SPLITS = {"frames": "train", "test_frames": "test"}

FileResolver = Callable[[dict, str], dict[str, Any]]
"""(frame entry, where) -> Frame keyword arguments for its files (image_path, mask_path, ...)."""


def _number(obj: dict, key: str, where: str, fallback: dict | None = None) -> float:
    value = obj.get(key, None if fallback is None else fallback.get(key))
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SceneError(f"{where}: field {key!r} must be a finite number; got {value!r}")
    return float(value)


def _pose(frame: dict, where: str) -> np.ndarray:
    raw = frame.get("transform_matrix")
    try:
        mat = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError):
        mat = None
    if mat is None or mat.shape not in ((4, 4), (3, 4)):
        raise SceneError(f"{where}: field 'transform_matrix' must be a 4x4 (or 3x4) matrix")
    if mat.shape == (3, 4):
        mat = np.vstack([mat, [0.0, 0.0, 0.0, 1.0]])
    if not np.isfinite(mat).all():
        raise SceneError(f"{where}: field 'transform_matrix' has non-finite values")
    rot = mat[:3, :3]
    if abs(np.linalg.det(rot)) < 1e-6:
        raise SceneError(f"{where}: field 'transform_matrix' is not invertible")
    return mat


def _check_undistorted(obj: dict, where: str) -> None:
    bad = [k for k in DISTORTION
           if obj.get(k) is not None and abs(_number(obj, k, where)) > 1e-9]
    if bad:
        raise SceneError(f"{where}: distortion {bad} is non-zero; undistort the images first "
                         "(as ScanNet++'s toolkit does)")


def parse_frames(meta: dict, path: Path, resolve: FileResolver) -> list[Frame]:
    """The ``frames`` (split "train") and optional ``test_frames`` (split "test") of a parsed
    transforms file; ``resolve`` maps each entry to its files."""
    if not isinstance(meta.get("frames"), list):
        raise SceneError(f"{path}: field 'frames' must be a list")
    _check_undistorted(meta, str(path))
    frames = []
    for key, split in SPLITS.items():
        entries = meta.get(key, [])
        if not isinstance(entries, list):
            raise SceneError(f"{path}: field {key!r} must be a list")
        for i, fr in enumerate(entries):
            where = f"{path}: {key}[{i}]"
            if not isinstance(fr, dict) or not isinstance(fr.get("file_path"), str):
                raise SceneError(f"{where}: field 'file_path' must be a string")
            _check_undistorted(fr, where)
            fx, fy, cx, cy, w, h = (_number(fr, k, where, meta) for k in INTRINSICS)
            if fx <= 0 or fy <= 0 or w < 1 or h < 1 or w != int(w) or h != int(h):
                raise SceneError(f"{where}: intrinsics must have positive focal lengths and "
                                 f"whole positive w, h; got fl_x={fx}, fl_y={fy}, w={w}, h={h}")
            w2c = opengl_c2w_to_opencv_w2c(_pose(fr, where))
            camera = Camera(fx, fy, cx, cy, int(w), int(h), w2c)
            frames.append(Frame(
                name=Path(fr["file_path"]).stem, camera=camera, split=split,
                depth_scale=_number(fr, "depth_scale", where, meta)
                if "depth_scale" in fr or "depth_scale" in meta else 1000.0,
                **resolve(fr, where)))
    return frames


def read_nerfstudio_scene(path: Path) -> Scene:
    """Parse ``transforms.json`` (paths relative to its folder); errors name the file and
    the field (and the frame)."""
    path = Path(path)
    root = path.parent
    meta: dict[str, Any] = read_json_object(path, error=SceneError)

    def resolve(fr: dict, where: str) -> dict[str, Any]:
        def optional(key: str) -> Path | None:
            value = fr.get(key)
            return root / value if isinstance(value, str) else None

        return {"image_path": root / fr["file_path"], "mask_path": optional("mask_path"),
                "depth_path": optional("depth_file_path"),
                "label_path": optional("label_file_path")}

    frames = parse_frames(meta, path, resolve)
    points = colors = None
    for name in ("points3D.txt", "points3D.ply", "sparse_pc.ply"):
        if (root / name).is_file():
            points, colors = read_points(root / name)
            break
    return Scene(root.name, root, frames, points, colors, meta={"format": "nerfstudio"})
