"""The synthetic scene generator: deterministic, complete, and an independent renderer."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from scenes.synthetic import LABELS, cast, generate, main, make_cameras, make_shapes


def _bytes(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_scene(tmp_path):
    a = generate(tmp_path / "a", scenes=1, views=3, size=24, seed=5)[0]
    b = generate(tmp_path / "b", scenes=1, views=3, size=24, seed=5)[0]
    c = generate(tmp_path / "c", scenes=1, views=3, size=24, seed=6)[0]
    assert _bytes(a) == _bytes(b)
    assert _bytes(a)["images/frame_0000.png"] != _bytes(c)["images/frame_0000.png"]


def test_scene_contents(tmp_path):
    scene = generate(tmp_path, scenes=2, views=4, size=32, seed=0)
    assert [p.name for p in scene] == ["scene_000", "scene_001"]
    meta = json.loads((scene[0] / "transforms.json").read_text())
    assert (meta["w"], meta["h"]) == (32, 24) and len(meta["frames"]) == 4
    labels = np.asarray(Image.open(scene[0] / meta["frames"][0]["label_file_path"]))
    assert set(np.unique(labels)) <= set(range(1, 4 + 4))
    assert {LABELS["floor"], LABELS["wall"]} <= set(np.unique(labels))
    assert (labels >= 4).any()  # the objects are in view
    depth = np.asarray(Image.open(scene[0] / meta["frames"][0]["depth_file_path"]))
    assert depth.dtype == np.uint16 and depth.min() > 300 and depth.max() < 9000  # mm
    assert not list(tmp_path.glob(".scene_*"))  # no temporary folders left


def test_ray_caster_hits_a_sphere_where_it_should():
    rng = np.random.default_rng(0)
    shapes = make_shapes(rng, 1)  # one sphere
    cam = make_cameras(rng, 1, 64, 48)[0]
    _rgb, depth, labels = cast(cam, shapes)
    sphere = shapes[0]
    uv, z = cam.project(sphere.center[None])
    col, row = int(uv[0, 0]), int(uv[0, 1])
    assert labels[row, col] == sphere.label
    # the front of the sphere is one radius closer than its centre (within a pixel's slope)
    assert abs(depth[row, col] - (z[0] - sphere.size[0])) < 0.1


@pytest.mark.parametrize("args, message", [
    (["--views", "1"], "--views must be at least 2"),
    (["--size", "4"], "--size must be at least 8"),
])
def test_cli_validates(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exc:
        main(["--output", str(tmp_path), *args])
    assert exc.value.code == 2 and message in capsys.readouterr().err
