"""COLMAP sparse models (text or binary) of undistorted pinhole cameras."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from scenes.cameras import Camera
from scenes.points import read_points
from scenes.types import Frame, Scene, SceneError

# model id -> (name, number of parameters); only undistorted pinhole models are accepted.
MODELS = {0: ("SIMPLE_PINHOLE", 3), 1: ("PINHOLE", 4), 2: ("SIMPLE_RADIAL", 4), 3: ("RADIAL", 5),
          4: ("OPENCV", 8), 5: ("OPENCV_FISHEYE", 8), 6: ("FULL_OPENCV", 12), 7: ("FOV", 5),
          8: ("SIMPLE_RADIAL_FISHEYE", 4), 9: ("RADIAL_FISHEYE", 5), 10: ("THIN_PRISM_FISHEYE", 12)}
PINHOLES = ("SIMPLE_PINHOLE", "PINHOLE")


def find_colmap_model(root: Path) -> Path | None:
    """The folder holding cameras/images(.txt|.bin): sparse/0, sparse, colmap or the root."""
    for sub in ("sparse/0", "sparse", "colmap", "."):
        folder = root / sub
        for ext in (".bin", ".txt"):
            if (folder / f"cameras{ext}").is_file() and (folder / f"images{ext}").is_file():
                return folder
    return None


def qvec_to_rotmat(q: np.ndarray) -> np.ndarray:
    w, x, y, z = np.asarray(q, dtype=np.float64) / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def _camera_from(model: str, width: int, height: int, params: list[float], where: str):
    if model not in PINHOLES:
        raise SceneError(f"{where}: camera model {model} has distortion; undistort the images "
                         "first (PINHOLE or SIMPLE_PINHOLE expected)")
    count = 3 if model == "SIMPLE_PINHOLE" else 4
    if len(params) != count:
        raise SceneError(f"{where}: a {model} camera has {count} parameters; got {len(params)}")
    if model == "SIMPLE_PINHOLE":
        f, cx, cy = params
        return f, f, cx, cy, width, height
    return (*params, width, height)


def _read_cameras_txt(path: Path) -> dict[int, tuple]:
    cams = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split()
        try:
            cam_id, model, w, h = int(parts[0]), parts[1], int(parts[2]), int(parts[3])
            params = [float(v) for v in parts[4:]]
        except (ValueError, IndexError):
            raise SceneError(f"{path}:{n}: expected 'ID MODEL WIDTH HEIGHT PARAMS...'") from None
        cams[cam_id] = _camera_from(model, w, h, params, f"{path}:{n}")
    return cams


def _read_images_txt(path: Path) -> list[tuple[str, np.ndarray, np.ndarray, int]]:
    lines = [ln for ln in path.read_text().splitlines() if not ln.startswith("#")]
    images = []
    for n in range(0, len(lines), 2):
        parts = lines[n].split()
        if not parts:
            continue
        try:
            q = np.array([float(v) for v in parts[1:5]])
            t = np.array([float(v) for v in parts[5:8]])
            images.append((parts[9], q, t, int(parts[8])))
        except (ValueError, IndexError):
            raise SceneError(f"{path}: image entry {n // 2}: expected "
                             "'ID QW QX QY QZ TX TY TZ CAMERA_ID NAME'") from None
    return images


class _Reader:
    def __init__(self, path: Path):
        self.path, self.data, self.pos = path, path.read_bytes(), 0

    def read(self, fmt: str) -> tuple:
        size = struct.calcsize("<" + fmt)
        if self.pos + size > len(self.data):
            raise SceneError(f"{self.path}: truncated binary COLMAP file")
        out = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += size
        return out

    def skip_list(self, item: str) -> None:
        """Skip a uint64-counted list of ``item`` records (points2D, tracks)."""
        count = self.read("Q")[0]
        self.pos += count * struct.calcsize("<" + item)

    def string(self) -> str:
        end = self.data.find(b"\x00", self.pos)
        if end < 0:
            raise SceneError(f"{self.path}: truncated binary COLMAP file")
        try:
            text = self.data[self.pos:end].decode("utf-8")
        except UnicodeDecodeError:
            raise SceneError(f"{self.path}: corrupt binary COLMAP file (bad image name at byte "
                             f"{self.pos})") from None
        self.pos = end + 1
        return text


def _read_cameras_bin(path: Path) -> dict[int, tuple]:
    r = _Reader(path)
    cams = {}
    for _ in range(r.read("Q")[0]):
        cam_id, model_id, w, h = r.read("iiQQ")
        if model_id not in MODELS:
            raise SceneError(f"{path}: unknown camera model id {model_id}")
        name, count = MODELS[model_id]
        params = list(r.read("d" * count))
        cams[cam_id] = _camera_from(name, int(w), int(h), params, str(path))
    return cams


def _read_images_bin(path: Path) -> list[tuple[str, np.ndarray, np.ndarray, int]]:
    r = _Reader(path)
    images = []
    for _ in range(r.read("Q")[0]):
        values = r.read("idddddddi")
        name = r.string()
        r.skip_list("ddq")
        images.append((name, np.array(values[1:5]), np.array(values[5:8]), values[8]))
    return images


def _read_points3d_bin(path: Path) -> tuple[np.ndarray, np.ndarray]:
    r = _Reader(path)
    xyz, rgb = [], []
    for _ in range(r.read("Q")[0]):
        values = r.read("QdddBBBd")
        xyz.append(values[1:4])
        rgb.append(values[4:7])
        r.skip_list("ii")
    return (np.array(xyz, np.float32).reshape(-1, 3),
            np.array(rgb, np.float32).reshape(-1, 3) / 255.0)


def read_colmap_scene(root: Path, model: Path) -> Scene:
    """Frames from a COLMAP model; images are looked up in ``root/images`` (else ``root``)."""
    binary = (model / "cameras.bin").is_file()
    cams = _read_cameras_bin(model / "cameras.bin") if binary else \
        _read_cameras_txt(model / "cameras.txt")
    images = _read_images_bin(model / "images.bin") if binary else \
        _read_images_txt(model / "images.txt")
    image_dir = root / "images" if (root / "images").is_dir() else root
    frames = []
    for name, q, t, cam_id in sorted(images, key=lambda im: im[0]):
        where = f"{model}: image {name!r}"
        if cam_id not in cams:
            raise SceneError(f"{where}: refers to camera {cam_id}, which cameras.* lacks")
        if not (np.isfinite(q).all() and np.isfinite(t).all()) or np.linalg.norm(q) < 1e-8:
            raise SceneError(f"{where}: pose (qvec, tvec) is not finite or not a rotation")
        w2c = np.eye(4)
        w2c[:3, :3] = qvec_to_rotmat(q)
        w2c[:3, 3] = t
        fx, fy, cx, cy, w, h = cams[cam_id]
        frames.append(Frame(Path(name).stem, image_dir / name, Camera(fx, fy, cx, cy, w, h, w2c)))
    points = colors = None
    if (model / "points3D.bin").is_file():
        points, colors = _read_points3d_bin(model / "points3D.bin")
    elif (model / "points3D.txt").is_file():
        points, colors = read_points(model / "points3D.txt")
    if points is not None and len(points) == 0:
        points = colors = None
    return Scene(root.name, root, frames, points, colors, meta={"format": "colmap"})
