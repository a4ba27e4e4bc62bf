"""Finding and reading scene folders in any supported layout."""

from __future__ import annotations

from pathlib import Path

from scenes.colmap import find_colmap_model, read_colmap_scene
from scenes.io import image_size
from scenes.nerfstudio import read_nerfstudio_scene
from scenes.scannetpp import TRANSFORMS_NAME, read_scannetpp_scene
from scenes.types import Scene, SceneError


def check_scene(scene: Scene) -> Scene:
    """Validate what a reader could not: non-empty, images present and of the right size."""
    if not scene.frames:
        raise SceneError(f"{scene.root}: empty scene (no frames)")
    for frame in scene.frames:
        size = image_size(frame.image_path)
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
