"""ScanNet++ DSLR scenes as the FiT3D authors' preprocessing lays them out.

    <scene>/transforms_train.json   nerfstudio fields; ``frames`` and ``test_frames``
    <scene>/images/<file_path>      undistorted, downscaled DSLR images
    <scene>/masks/<stem>.png        anonymisation masks (255 = keep), where present
    <scene>/points3D.txt            COLMAP's sparse points
    <scene>/depth/<stem>.png        optional: depth in millimetres (ours; for correspondence)

ScanNet++ wrote its transforms with nerfstudio's COLMAP conversion, which swaps the world's
x and y axes and negates z, while points3D.txt stays in COLMAP's world. The authors undo
that conversion on the poses; here the points are carried into the transforms' world
instead (the same rigid change of frame, so renders are identical), which keeps poses,
depth and correspondences in the one convention of the file. A transforms file that states
its ``applied_transform`` (newer nerfstudio) is taken at its word.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fit3d_hub.jsonio import read_json_object
from scenes.nerfstudio import parse_frames
from scenes.points import read_points
from scenes.types import Scene, SceneError

TRANSFORMS_NAME = "transforms_train.json"
# nerfstudio's COLMAP -> transforms world: rows (x, y, z) -> (y, x, -z).
COLMAP_TO_NERFSTUDIO = np.array([[0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0],
                                 [0.0, 0.0, -1.0, 0.0]])


def is_scannetpp_layout(root: Path) -> bool:
    return (root / TRANSFORMS_NAME).is_file() and (root / "images").is_dir()


def world_transform(meta: dict, path: Path) -> np.ndarray:
    """3x4 map from COLMAP's world (points3D.txt) into the transforms' world."""
    raw = meta.get("applied_transform")
    if raw is None:
        return COLMAP_TO_NERFSTUDIO
    mat = np.asarray(raw, dtype=np.float64)
    if mat.shape == (4, 4):
        mat = mat[:3]
    if mat.shape != (3, 4) or not np.isfinite(mat).all():
        raise SceneError(f"{path}: field 'applied_transform' must be a finite 3x4 matrix")
    return mat


def read_scannetpp_scene(root: Path) -> Scene:
    """Read one scene folder of the authors' layout; errors name the file and the field."""
    root = Path(root)
    path = root / TRANSFORMS_NAME
    meta: dict[str, Any] = read_json_object(path, error=SceneError)

    def resolve(fr: dict, where: str) -> dict[str, Any]:
        image = root / "images" / fr["file_path"]
        if not image.is_file():
            raise SceneError(f"{where}: field 'file_path' names {image}, which does not exist "
                             "(images are expected under images/)")
        stem = Path(fr["file_path"]).stem
        optional = {"mask_path": root / "masks" / f"{stem}.png",
                    "depth_path": root / "depth" / f"{stem}.png"}
        return {"image_path": image,
                **{k: (p if p.is_file() else None) for k, p in optional.items()}}

    frames = parse_frames(meta, path, resolve)
    points = colors = None
    source = root / "points3D.txt"
    if source.is_file():
        points, colors = read_points(source)
        transform = world_transform(meta, path)
        points = (points @ transform[:, :3].T + transform[:, 3]).astype(np.float32)
    return Scene(root.name, root, frames, points, colors, meta={"format": "scannetpp"})
