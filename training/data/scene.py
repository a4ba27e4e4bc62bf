"""A scene: frames (image, camera, optional mask and depth) and optional initial points."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from training.data.cameras import Camera


class SceneError(ValueError):
    """Bad scene input; the message names the file and the field."""


@dataclass(frozen=True)
class Frame:
    name: str
    image_path: Path
    camera: Camera
    mask_path: Path | None = None
    depth_path: Path | None = None
    label_path: Path | None = None
    depth_scale: float = 1000.0
    """Depth PNG units per metre (ScanNet++ and the synthetic scenes store millimetres)."""
    split: str = "train"
    """"train" for ``frames``, "test" for ScanNet++'s ``test_frames``."""


@dataclass
class Scene:
    name: str
    root: Path
    frames: list[Frame]
    points: np.ndarray | None = None  # (N, 3) float32, world
    point_colors: np.ndarray | None = None  # (N, 3) float32 in [0, 1]
    meta: dict = field(default_factory=dict)

    def check(self) -> Scene:
        """Validate what a reader could not: non-empty, images present and of the right size."""
        if not self.frames:
            raise SceneError(f"{self.root}: empty scene (no frames)")
        for frame in self.frames:
            size = image_size(frame.image_path)
            cam = frame.camera
            if size != (cam.width, cam.height):
                raise SceneError(f"{frame.image_path}: image is {size[0]}x{size[1]} but the "
                                 f"intrinsics say w={cam.width}, h={cam.height}")
            for label, path in (("mask", frame.mask_path), ("depth", frame.depth_path)):
                if path is not None and not path.is_file():
                    raise SceneError(f"{path}: {label} file of frame {frame.name!r} is missing")
        return self


def training_views(splits: list[str], holdout_every: int = 0,
                   hold_out_test: bool = False) -> list[int]:
    """The held-out view rule: indices of the views a stage may train on.

    By default every view trains, ScanNet++'s ``test_frames`` included (the authors' Stage 1
    and Stage 2 both see them); ``hold_out_test`` keeps test frames out, and
    ``holdout_every=k`` every k-th view. Should nothing remain, all views train.
    """
    keep = [i for i, split in enumerate(splits)
            if not (hold_out_test and split == "test")
            and not (holdout_every > 0 and i % holdout_every == 0)]
    return keep or list(range(len(splits)))


def image_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as img:
            return img.size
    except FileNotFoundError:
        raise SceneError(f"{path}: image file is missing") from None
    except (UnidentifiedImageError, OSError) as err:
        raise SceneError(f"{path}: not a readable image ({err})") from None


def load_image(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """(H, W, 3) uint8 RGB as stored, or resized (bicubic, antialiased) to ``size`` =
    (width, height): the image as a preprocessing step that downscaled the files would have
    stored it."""
    with Image.open(path) as img:
        img = img.convert("RGB")
        if size is not None and img.size != tuple(size):
            img = img.resize(tuple(size), Image.BICUBIC)
        return np.array(img)


def load_rgb(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """(H, W, 3) float32 in [0, 1], resized to ``size`` = (width, height) if given."""
    return load_image(path, size).astype(np.float32) / 255.0


def load_mask(path: Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """(H, W) bool: True where the pixel is valid (ScanNet++ masks: 255 = keep)."""
    with Image.open(path) as img:
        img = img.convert("L")
        if size is not None and img.size != tuple(size):
            img = img.resize(size, Image.NEAREST)
        return np.asarray(img) > 127


def load_depth(path: Path, scale: float, size: tuple[int, int] | None = None) -> np.ndarray:
    """(H, W) float32 metres; 0 = unknown. ``.npy`` (metres) or 16-bit PNG (``scale``/m)."""
    if path.suffix == ".npy":
        depth = np.load(path, allow_pickle=False).astype(np.float32)
        if size is not None and depth.shape[::-1] != tuple(size):
            depth = np.asarray(Image.fromarray(depth).resize(size, Image.NEAREST))
        return depth
    with Image.open(path) as img:
        if size is not None and img.size != tuple(size):
            img = img.resize(size, Image.NEAREST)
        return np.asarray(img, dtype=np.float32) / scale


SCENE_LAYOUTS = ("transforms.json (nerfstudio: frames[].file_path, transform_matrix, fl_x, "
                 "fl_y, cx, cy, w, h), transforms_train.json with images/ (ScanNet++ as the "
                 "FiT3D authors lay it out: frames, test_frames), or a COLMAP model "
                 "(sparse/0/cameras and images, .txt or .bin)")


def load_scene(path: str | Path) -> Scene:
    """Read a scene folder in any of the layouts above (nerfstudio, ScanNet++, COLMAP)."""
    from training.data.colmap import find_colmap_model, read_colmap_scene
    from training.data.nerfstudio import read_nerfstudio_scene
    from training.data.scannetpp import TRANSFORMS_NAME, read_scannetpp_scene

    root = Path(path)
    if not root.is_dir():
        raise SceneError(f"{root}: scene folder does not exist")
    if (root / "transforms.json").is_file():
        return read_nerfstudio_scene(root / "transforms.json").check()
    if (root / TRANSFORMS_NAME).is_file():
        if not (root / "images").is_dir():
            raise SceneError(f"{root / TRANSFORMS_NAME}: the ScanNet++ layout keeps its images "
                             f"in {root / 'images'}, which does not exist")
        return read_scannetpp_scene(root).check()
    model = find_colmap_model(root)
    if model is not None:
        return read_colmap_scene(root, model).check()
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
