"""Finding and reading scene folders in any supported layout."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from fit3d_hub.images import check_pixels
from scenes.colmap import find_colmap_model, read_colmap_scene
from scenes.io import image_size
from scenes.nerfstudio import read_nerfstudio_scene
from scenes.scannetpp import TRANSFORMS_NAME, read_scannetpp_scene
from scenes.types import Frame, Scene, SceneError

MAX_SIDE = 1 << 16
"""Most pixels an image side may have (Pillow's own limit is 2**16 for several formats)."""


def inside(path: Path, root: Path) -> bool:
    """Whether ``path`` lies in ``root`` as written (``..`` resolved, symlinks not: a
    symlink inside the scene folder may point at a dataset elsewhere)."""
    norm, base = os.path.normpath(os.path.abspath(path)), os.path.normpath(os.path.abspath(root))
    return os.path.commonpath([norm, base]) == base


def _finite_positive(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def check_camera(frame: Frame, where: str) -> None:
    """Intrinsics finite with positive focal lengths and size, a finite pose."""
    cam = frame.camera
    for name in ("fx", "fy"):
        if not _finite_positive(getattr(cam, name)):
            raise SceneError(f"{where}: focal length {name}={getattr(cam, name)!r}; expected a "
                             "finite number above 0")
    for name in ("cx", "cy"):
        if not math.isfinite(getattr(cam, name)):
            raise SceneError(f"{where}: principal point {name}={getattr(cam, name)!r} is not "
                             "finite")
    if not (1 <= cam.width <= MAX_SIDE and 1 <= cam.height <= MAX_SIDE):
        raise SceneError(f"{where}: image size w={cam.width}, h={cam.height}; expected "
                         f"1..{MAX_SIDE} pixels a side")
    if not np.isfinite(np.asarray(cam.w2c, dtype=np.float64)).all():
        raise SceneError(f"{where}: camera pose is not finite")
    if frame.depth_path is not None and not _finite_positive(frame.depth_scale):
        raise SceneError(f"{where}: depth_scale={frame.depth_scale!r}; expected a finite "
                         "number above 0 (depth units per metre)")


def check_scene(scene: Scene) -> Scene:
    """Validate what a reader could not: non-empty; every file inside the scene folder;
    cameras finite; images present, of the right size and within the memory budget."""
    if not scene.frames:
        raise SceneError(f"{scene.root}: empty scene (no frames)")
    for frame in scene.frames:
        where = f"{scene.root}: frame {frame.name!r}"
        for path in (frame.image_path, frame.mask_path, frame.depth_path, frame.label_path):
            if path is not None and not inside(path, scene.root):
                raise SceneError(f"{where}: {path} lies outside the scene folder; scene files "
                                 "must be inside it (a symlink inside it may point elsewhere)")
        check_camera(frame, where)
        size = image_size(frame.image_path)
        check_pixels(*size, frame.image_path)
        cam = frame.camera
        if size != (cam.width, cam.height):
            raise SceneError(f"{frame.image_path}: image is {size[0]}x{size[1]} but the "
                             f"intrinsics say w={cam.width}, h={cam.height}")
        for label, path in (("mask", frame.mask_path), ("depth", frame.depth_path)):
            if path is not None and not path.is_file():
                raise SceneError(f"{path}: {label} file of frame {frame.name!r} is missing")
    return scene


SCENE_LAYOUTS = ("transforms.json (nerfstudio: frames[].file_path, transform_matrix, fl_x, "
                 "fl_y, cx, cy, w, h), transforms_train.json with images/ (ScanNet++ as the "
                 "FiT3D authors lay it out: frames, test_frames), or a COLMAP model "
                 "(sparse/0/cameras and images, .txt or .bin)")


def load_scene(path: str | Path) -> Scene:
    """Read a scene folder in any of the layouts above (nerfstudio, ScanNet++, COLMAP)."""
    root = Path(path)
    if not root.is_dir():
        raise SceneError(f"{root}: scene folder does not exist")
    if (root / "transforms.json").is_file():
        return check_scene(read_nerfstudio_scene(root / "transforms.json"))
    if (root / TRANSFORMS_NAME).is_file():
        if not (root / "images").is_dir():
            raise SceneError(f"{root / TRANSFORMS_NAME}: the ScanNet++ layout keeps its images "
                             f"in {root / 'images'}, which does not exist")
        return check_scene(read_scannetpp_scene(root))
    model = find_colmap_model(root)
    if model is not None:
        return check_scene(read_colmap_scene(root, model))
    raise SceneError(f"{root}: not a scene folder; expected {SCENE_LAYOUTS}")


def scene_paths(spec: str | Path) -> list[Path]:
    """``--scenes``: a folder of scene folders, a single scene folder, or a text file of paths."""
    spec = Path(spec)
    if spec.is_file():
        lines = [ln.strip() for ln in spec.read_text().splitlines()]
        paths = [Path(ln) if Path(ln).is_absolute() else spec.parent / ln
                 for ln in lines if ln and not ln.startswith("#")]
        if not paths:
            raise SceneError(f"{spec}: lists no scene paths")
        return paths
    if not spec.is_dir():
        raise SceneError(f"{spec}: neither a folder of scenes nor a text file of paths")
    markers = ("transforms.json", "transforms_train.json", "sparse")
    if any((spec / m).exists() for m in markers):
        return [spec]
    children = sorted(p for p in spec.iterdir() if p.is_dir())
    if not children:
        raise SceneError(f"{spec}: holds no scene folders")
    return children
