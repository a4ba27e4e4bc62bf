"""Initial point clouds: COLMAP ``points3D.txt`` and PLY (ASCII or binary little-endian)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fit3d_hub.budget import check_bytes
from scenes.types import SceneError

_PLY_TYPES = {"float": "f4", "float32": "f4", "double": "f8", "float64": "f8", "uchar": "u1",
              "uint8": "u1", "char": "i1", "int8": "i1", "short": "i2", "int16": "i2",
              "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4",
              "uint32": "u4"}


def read_points(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3) float32 positions and (N, 3) float32 colours in [0, 1]."""
    path = Path(path)
    if path.suffix == ".ply":
        return _read_ply(path)
    return _read_points3d_txt(path)


def _read_points3d_txt(path: Path) -> tuple[np.ndarray, np.ndarray]:
    # parsed as Python floats first: about 12 times the text in memory
    check_bytes(12 * path.stat().st_size, str(path), "parsing these points")
    xyz, rgb = [], []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        parts = line.split()
        try:
            xyz.append([float(v) for v in parts[1:4]])
            rgb.append([int(v) for v in parts[4:7]])
        except (ValueError, IndexError):
            raise SceneError(f"{path}:{n}: expected 'ID X Y Z R G B ERROR TRACK...'") from None
    return _finish(path, np.array(xyz, np.float32).reshape(-1, 3),
                   np.array(rgb, np.float32).reshape(-1, 3) / 255.0)


def _read_ply(path: Path) -> tuple[np.ndarray, np.ndarray]:
    data = path.read_bytes()
    end = data.find(b"end_header")
    if not data.startswith(b"ply") or end < 0:
        raise SceneError(f"{path}: not a PLY file (no 'ply' magic or 'end_header')")
    header = data[:end].decode("ascii", "replace").splitlines()
    body = data[data.index(b"\n", end) + 1:]
    fmt = next((ln.split()[1] for ln in header if ln.startswith("format")), "")
    props, count, in_vertex = [], 0, False
    for ln in header:
        parts = ln.split()
        if parts[:1] == ["element"]:
            in_vertex = parts[1] == "vertex"
            count = int(parts[2]) if in_vertex else count
        elif parts[:1] == ["property"] and in_vertex:
            if parts[1] == "list" or parts[1] not in _PLY_TYPES:
                raise SceneError(f"{path}: unsupported vertex property {' '.join(parts[1:])}")
            props.append((parts[2], _PLY_TYPES[parts[1]]))
    names = [p[0] for p in props]
    if not {"x", "y", "z"} <= set(names):
        raise SceneError(f"{path}: vertex element lacks x, y, z")
    if fmt == "ascii":
        rows = np.array(body.decode("ascii").split()[: count * len(props)], dtype=np.float64)
        table = {n: rows[i::len(props)] for i, n in enumerate(names)}
    elif fmt == "binary_little_endian":
        dtype = np.dtype([(n, "<" + t) for n, t in props])
        if len(body) < count * dtype.itemsize:
            raise SceneError(f"{path}: truncated ({count} vertices announced)")
        arr = np.frombuffer(body, dtype=dtype, count=count)
        table = {n: arr[n].astype(np.float64) for n in names}
    else:
        raise SceneError(f"{path}: unsupported PLY format {fmt!r}")
    xyz = np.stack([table["x"], table["y"], table["z"]], -1).astype(np.float32)
    if {"red", "green", "blue"} <= set(names):
        rgb = np.stack([table["red"], table["green"], table["blue"]], -1).astype(np.float32)
        rgb = rgb / 255.0 if rgb.max() > 1.0 else rgb
    else:
        rgb = np.full_like(xyz, 0.5)
    return _finish(path, xyz, rgb)


def _finish(path: Path, xyz: np.ndarray, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    keep = np.isfinite(xyz).all(axis=1)
    if not keep.any():
        raise SceneError(f"{path}: holds no finite points")
    return xyz[keep], np.clip(rgb[keep], 0.0, 1.0)
