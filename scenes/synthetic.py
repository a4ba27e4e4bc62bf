"""Synthetic multi-view scenes: textured objects in a textured room, rendered by ray casting.

Each scene is written in the nerfstudio scene format (``transforms.json``, images, 16-bit
depth PNGs in millimetres, per-pixel label PNGs, ``points3D.txt``), or with ``--layout
scannetpp`` as the FiT3D authors lay out ScanNet++ (``transforms_train.json`` with ``frames``
and ``test_frames`` in nerfstudio's permuted world, JPEG ``images/``, anonymisation
``masks/``, COLMAP-world ``points3D.txt``, plus ``depth/``), so both readers are exercised.
Rendering is an analytic ray caster (planes, spheres, boxes; Lambertian
shading), independent of the Gaussian rasterizer it is used to test; output is a pure
function of the seed.

    python -m scenes.synthetic --output DIR --scenes K --views N --size S --seed X \
        [--layout nerfstudio|scannetpp]
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from fit3d_hub import commandline
from fit3d_hub.atomic import atomic_directory
from fit3d_hub.commandline import option
from fit3d_hub.errors import UsageError
from scenes.cameras import Camera, opencv_w2c_to_opengl_c2w
from scenes.scannetpp import COLMAP_TO_NERFSTUDIO

ROOM_HALF = 3.0  # the room spans [-3, 3] x [-3, 3] x [0, HEIGHT] (z up)
ROOM_HEIGHT = 2.6
LIGHT = np.array([0.4, 0.3, 0.86]) / np.linalg.norm([0.4, 0.3, 0.86])
LABELS = {"floor": 1, "wall": 2, "ceiling": 3}  # objects get 4, 5, ...; 0 = nothing (unused)


@dataclass(frozen=True)
class Shape:
    kind: str  # "sphere" | "box"
    center: np.ndarray
    size: np.ndarray  # sphere: radius in size[0]; box: half extents
    color: np.ndarray
    color2: np.ndarray
    frequency: float
    label: int


def make_shapes(rng: np.random.Generator, count: int) -> list[Shape]:
    """Non-overlapping spheres and boxes standing on the floor near the room's centre."""
    shapes: list[Shape] = []
    while len(shapes) < count:
        kind = "sphere" if len(shapes) % 2 == 0 else "box"
        size = rng.uniform(0.3, 0.6, 3) if kind == "box" else np.full(3, rng.uniform(0.3, 0.55))
        xy = rng.uniform(-1.6, 1.6, 2)
        center = np.array([xy[0], xy[1], size[2] if kind == "box" else size[0]])
        if any(np.linalg.norm(center[:2] - s.center[:2]) < size.max() + s.size.max() + 0.15
               for s in shapes):
            continue
        shapes.append(Shape(kind, center, size, rng.uniform(0.2, 0.95, 3),
                            rng.uniform(0.05, 0.6, 3), float(rng.uniform(2.0, 6.0)),
                            4 + len(shapes)))
    return shapes


def look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    """OpenCV world-to-camera matrix of a camera at ``eye`` looking at ``target`` (z up)."""
    forward = target - eye
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    rot = np.stack([right, down, forward])  # rows: camera axes in world coordinates
    w2c = np.eye(4)
    w2c[:3, :3] = rot
    w2c[:3, 3] = -rot @ eye
    return w2c


def make_cameras(rng: np.random.Generator, views: int, width: int, height: int) -> list[Camera]:
    """Cameras on a ring around the objects, at varying heights, looking near the centre."""
    focal = 0.5 * width / np.tan(np.deg2rad(32.0))
    cams = []
    for i in range(views):
        angle = 2 * np.pi * i / views + rng.uniform(-0.1, 0.1)
        radius = rng.uniform(2.2, 2.6)
        eye = np.array([radius * np.cos(angle), radius * np.sin(angle), rng.uniform(1.1, 1.7)])
        target = np.array([*rng.uniform(-0.3, 0.3, 2), rng.uniform(0.3, 0.6)])
        cams.append(Camera(focal, focal, width / 2, height / 2, width, height,
                           look_at(eye, target)))
    return cams


def _checker(u: np.ndarray, v: np.ndarray, freq: float) -> np.ndarray:
    return ((np.floor(u * freq) + np.floor(v * freq)) % 2).astype(np.float64)


def cast(camera: Camera, shapes: list[Shape]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render (H, W, 3) RGB in [0, 1], (H, W) z-depth in metres and (H, W) uint8 labels."""
    h, w = camera.height, camera.width
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5  # pixel centres
    dirs_cam = np.stack([(xs - camera.cx) / camera.fx, (ys - camera.cy) / camera.fy,
                         np.ones_like(xs)], -1).reshape(-1, 3)
    rot = camera.w2c[:3, :3]
    origin = camera.center
    dirs = dirs_cam @ rot  # camera -> world (rows of rot are camera axes)
    norm = np.linalg.norm(dirs, axis=1, keepdims=True)
    unit = dirs / norm
    n = len(unit)

    best_t = np.full(n, np.inf)
    normal = np.zeros((n, 3))
    label = np.zeros(n, np.uint8)
    albedo = np.zeros((n, 3))

    # The room from inside: the nearest exit face along each axis.
    lo = np.array([-ROOM_HALF, -ROOM_HALF, 0.0])
    hi = np.array([ROOM_HALF, ROOM_HALF, ROOM_HEIGHT])
    with np.errstate(divide="ignore", invalid="ignore"):
        exits = np.where(unit > 0, (hi - origin) / unit, (lo - origin) / unit)
    exits = np.where(np.abs(unit) < 1e-12, np.inf, exits)
    axis = np.argmin(exits, axis=1)
    best_t = exits[np.arange(n), axis]
    hit = origin + unit * best_t[:, None]
    positive = unit[np.arange(n), axis] > 0
    normal[np.arange(n), axis] = np.where(positive, -1.0, 1.0)
    floor = (axis == 2) & ~positive
    ceiling = (axis == 2) & positive
    wall = axis < 2
    label[floor], label[ceiling], label[wall] = LABELS["floor"], LABELS["ceiling"], LABELS["wall"]
    albedo[floor] = np.where(_checker(hit[floor, 0], hit[floor, 1], 1.5)[:, None] > 0,
                             [0.75, 0.62, 0.45], [0.35, 0.25, 0.18])
    albedo[ceiling] = [0.9, 0.9, 0.85]
    stripes = 0.5 + 0.5 * np.sin(3.0 * (hit[wall, 0] + hit[wall, 1]) + 4.0 * hit[wall, 2])
    wall_colors = np.array([[0.55, 0.7, 0.85], [0.85, 0.6, 0.55], [0.6, 0.8, 0.55],
                            [0.8, 0.75, 0.5]])
    which = axis[wall] * 2 + positive[wall]
    albedo[wall] = wall_colors[which] * (0.6 + 0.4 * stripes[:, None])

    for s in shapes:
        if s.kind == "sphere":
            oc = origin - s.center
            b = unit @ oc
            disc = b * b - (oc @ oc - s.size[0] ** 2)
            t = np.where(disc > 0, -b - np.sqrt(np.maximum(disc, 0.0)), np.inf)
        else:
            with np.errstate(divide="ignore", invalid="ignore"):
                t1 = (s.center - s.size - origin) / unit
                t2 = (s.center + s.size - origin) / unit
            t_near = np.nanmax(np.minimum(t1, t2), axis=1)
            t_far = np.nanmin(np.maximum(t1, t2), axis=1)
            t = np.where((t_near <= t_far) & (t_near > 0), t_near, np.inf)
        closer = (t > 1e-6) & (t < best_t)
        if not closer.any():
            continue
        best_t[closer] = t[closer]
        p = origin + unit[closer] * t[closer, None]
        local = p - s.center
        if s.kind == "sphere":
            nrm = local / s.size[0]
            u = np.arctan2(nrm[:, 1], nrm[:, 0]) / np.pi
            v = np.arccos(np.clip(nrm[:, 2], -1, 1)) / np.pi
        else:
            face = np.argmax(np.abs(local) / s.size, axis=1)
            nrm = np.zeros_like(local)
            nrm[np.arange(len(face)), face] = np.sign(local[np.arange(len(face)), face])
            u = np.where(face == 0, local[:, 1], local[:, 0])
            v = np.where(face == 2, local[:, 1], local[:, 2])
        pattern = _checker(u, v, s.frequency)
        normal[closer] = nrm
        label[closer] = s.label
        albedo[closer] = np.where(pattern[:, None] > 0, s.color, s.color2)

    shade = 0.35 + 0.65 * np.clip(normal @ LIGHT, 0.0, 1.0) * 0.9 + 0.1 * np.abs(normal[:, 2])
    rgb = np.clip(albedo * shade[:, None], 0.0, 1.0)
    depth = best_t / norm[:, 0]  # ray length -> z in the camera frame (dirs_cam has z = 1)
    return rgb.reshape(h, w, 3), depth.reshape(h, w), label.reshape(h, w)


LAYOUTS = ("nerfstudio", "scannetpp")


def anonymised(height: int, width: int, index: int) -> np.ndarray:
    """A ScanNet++-style anonymisation mask (255 = keep): a blurred "face" box per view."""
    mask = np.full((height, width), 255, np.uint8)
    top, left = (index * 7) % max(1, height // 2), (index * 11) % max(1, width // 2)
    mask[top:top + max(2, height // 6), left:left + max(2, width // 6)] = 0
    return mask


def write_scene(out: Path, seed: int, views: int, size: int, objects: int = 4,
                points: int = 4000, layout: str = "nerfstudio", test_every: int = 4) -> Path:
    """Render one scene into ``out`` (written in a temporary folder, then renamed: a scene
    folder is whole or absent).

    ``layout="scannetpp"`` writes the authors' ScanNet++ layout; every ``test_every``-th
    view goes to ``test_frames``.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}; got {layout!r}")
    rng = np.random.default_rng(seed)
    width, height = size, max(8, round(size * 3 / 4))
    shapes = make_shapes(rng, objects)
    cams = make_cameras(rng, views, width, height)
    scannetpp = layout == "scannetpp"
    with atomic_directory(out) as tmp:
        for sub in ("images", "depth") + (("masks",) if scannetpp else ("labels",)):
            (tmp / sub).mkdir()
        frames, tests, cloud, cloud_rgb = [], [], [], []
        for i, cam in enumerate(cams):
            rgb, depth, labels = cast(cam, shapes)
            name = f"frame_{i:04d}"
            image = Image.fromarray((rgb * 255).round().astype(np.uint8))
            Image.fromarray(np.clip(depth * 1000, 0, 65535).round().astype(np.uint16)) \
                .save(tmp / "depth" / f"{name}.png")
            c2w = opencv_w2c_to_opengl_c2w(cam.w2c)
            if scannetpp:
                image.save(tmp / "images" / f"{name}.JPG", quality=95)
                Image.fromarray(anonymised(height, width, i)).save(tmp / "masks" / f"{name}.png")
                pose = np.vstack([COLMAP_TO_NERFSTUDIO, [0, 0, 0, 1]]) @ c2w
                entry = {"file_path": f"{name}.JPG", "transform_matrix": pose.tolist()}
                (tests if i % test_every == 0 else frames).append(entry)
            else:
                image.save(tmp / "images" / f"{name}.png")
                Image.fromarray(labels).save(tmp / "labels" / f"{name}.png")
                frames.append({
                    "file_path": f"images/{name}.png", "depth_file_path": f"depth/{name}.png",
                    "label_file_path": f"labels/{name}.png",
                    "transform_matrix": c2w.tolist(),
                })
            pick = rng.choice(width * height, size=min(width * height, max(1, points // views)),
                              replace=False)
            uv = np.stack([pick % width + 0.5, pick // width + 0.5], -1).astype(np.float64)
            cloud.append(cam.unproject(uv, depth.reshape(-1)[pick]))
            cloud_rgb.append(rgb.reshape(-1, 3)[pick])
        meta = {"camera_model": "OPENCV" if not scannetpp else "PINHOLE", "fl_x": cams[0].fx,
                "fl_y": cams[0].fy, "cx": cams[0].cx, "cy": cams[0].cy, "w": width, "h": height,
                "depth_scale": 1000.0}
        if scannetpp:
            meta.update(frames=frames, test_frames=tests)
        else:
            meta.update(labels={**LABELS, **{f"object_{s.label - 4}": s.label for s in shapes}},
                        generator={"name": "scenes.synthetic", "seed": seed},
                        frames=frames)
        name = "transforms_train.json" if scannetpp else "transforms.json"
        (tmp / name).write_text(json.dumps(meta, indent=1))
        xyz = np.concatenate(cloud) + rng.normal(0, 0.01, (sum(len(c) for c in cloud), 3))
        colors = (np.concatenate(cloud_rgb) * 255).round().astype(int)
        lines = ["# 3D point list: POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[]"]
        lines += [f"{i + 1} {p[0]:.5f} {p[1]:.5f} {p[2]:.5f} {c[0]} {c[1]} {c[2]} 0.0"
                  for i, (p, c) in enumerate(zip(xyz, colors, strict=True))]
        (tmp / "points3D.txt").write_text("\n".join(lines) + "\n")
    return out


def generate(output: str | Path, scenes: int = 1, views: int = 12, size: int = 64,
             seed: int = 0, points: int = 4000, layout: str = "nerfstudio") -> list[Path]:
    """Write ``scenes`` scenes ``scene_000``, ... into ``output``; scene k uses seed + k."""
    return [write_scene(Path(output) / f"scene_{k:03d}", seed + k, views, size, points=points,
                        layout=layout) for k in range(scenes)]


@dataclass
class SyntheticArgs:
    """The flags of ``python -m scenes.synthetic``."""

    output: str = option(help="folder to write the scene folders into")
    scenes: int = option(1, help="how many scenes")
    views: int = option(12, help="views per scene")
    size: int = option(64, help="image width (height is 3/4)")
    seed: int = option(0, help="random seed (scene k uses seed + k)")
    layout: str = option("nerfstudio", choices=LAYOUTS, help="nerfstudio transforms.json, or "
                         "ScanNet++ as the FiT3D authors lay it out")

    def __post_init__(self) -> None:
        for name, value, low in (("--scenes", self.scenes, 1), ("--views", self.views, 2),
                                 ("--size", self.size, 8)):
            if value < low:
                raise UsageError(f"{name} must be at least {low}; got {value}")


PROG = "python -m scenes.synthetic"


def main(argv: list[str] | None = None) -> int:
    args, = commandline.command(PROG, __doc__, SyntheticArgs, argv=argv)

    def body() -> None:
        for path in generate(args.output, args.scenes, args.views, args.size, args.seed,
                             layout=args.layout):
            print(path)

    return commandline.run(PROG, body)


if __name__ == "__main__":
    raise SystemExit(main())
