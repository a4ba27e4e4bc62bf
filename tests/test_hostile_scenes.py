"""Hostile scenes: non-finite cameras, paths out of the scene folder, sizes over the budget.
Each is one :class:`SceneError` (or BudgetError) line naming the scene, frame or file."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
from test_scene_readers import _write_colmap

from fit3d_hub.errors import BudgetError
from scenes.load import load_scene
from scenes.synthetic import generate
from scenes.types import SceneError


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("hostile"), scenes=1, views=4, size=32, seed=4)[0]


@pytest.fixture
def scene(synthetic, tmp_path):
    return shutil.copytree(synthetic, tmp_path / "scene")


def _edit(scene, change):
    meta = json.loads((scene / "transforms.json").read_text())
    change(meta)
    (scene / "transforms.json").write_text(json.dumps(meta))


def _first(meta):
    return meta["frames"][0]


@pytest.mark.parametrize("change, message", [
    (lambda m: (m.update(fl_x=0.0), [f.pop("fl_x", None) for f in m["frames"]]),
     "fl_x=0.0"),
    (lambda m: _first(m).update(fl_x=0.0), "fl_x=0.0"),
    (lambda m: _first(m).update(fl_y=-5.0), "fl_y=-5.0"),
    (lambda m: _first(m).update(depth_scale=0.0), "depth_scale=0.0"),
    (lambda m: _first(m).update(depth_scale=math.nan), "depth_scale' must be a finite"),
    (lambda m: _first(m).update(file_path="../../outside.png"), "outside the scene folder"),
    (lambda m: _first(m).update(file_path="/etc/hostname"), "outside the scene folder"),
])
def test_bad_camera_or_path_is_one_line_naming_the_frame(scene, change, message):
    _edit(scene, change)
    with pytest.raises(SceneError) as err:
        load_scene(scene)
    assert message in str(err.value) and str(scene) in str(err.value)
    assert "\n" not in str(err.value)


def test_a_symlink_inside_the_scene_folder_may_point_elsewhere(scene, tmp_path):
    frame = json.loads((scene / "transforms.json").read_text())["frames"][0]
    image = scene / frame["file_path"]
    elsewhere = tmp_path / "dataset" / image.name
    elsewhere.parent.mkdir()
    shutil.move(image, elsewhere)
    image.symlink_to(elsewhere)
    assert len(load_scene(scene).frames) == 4


def _colmap_copy(synthetic, tmp_path):
    """The synthetic scene as a COLMAP text model (its images copied) in a new folder."""
    reference = load_scene(synthetic)
    root = tmp_path / "colmap"
    shutil.copytree(synthetic / "images", root / "images")
    _write_colmap(reference, root / "sparse" / "0", binary=False)
    return root


@pytest.mark.parametrize("camera, message", [
    ("1 PINHOLE 32 32 nan 30 16 16", "fx=nan"),
    ("1 PINHOLE 32 32 0 30 16 16", "fx=0.0"),
    ("1 SIMPLE_PINHOLE 32 32 30 16", "has 3 parameters; got 2"),
    ("1 PINHOLE 32 32 30 30 inf 16", "cx=inf"),
])
def test_colmap_cameras_are_checked(synthetic, tmp_path, camera, message):
    root = _colmap_copy(synthetic, tmp_path)
    (root / "sparse" / "0" / "cameras.txt").write_text(camera + "\n")
    with pytest.raises(SceneError, match=message):
        load_scene(root)


def test_colmap_image_names_cannot_leave_the_scene(synthetic, tmp_path):
    root = _colmap_copy(synthetic, tmp_path)
    images = root / "sparse" / "0" / "images.txt"
    name = load_scene(synthetic).frames[0].image_path.name
    images.write_text(images.read_text().replace(name, f"../../{name}", 1))
    with pytest.raises(SceneError, match="outside the scene folder"):
        load_scene(root)


def test_point_clouds_and_initial_gaussians_are_budgeted(synthetic, tmp_path, monkeypatch):
    from training.fit3d.lift.gaussians import FeatureGaussians

    root = _colmap_copy(synthetic, tmp_path)
    monkeypatch.setenv("FIT3D_HUB_MAX_BYTES", "20KB")
    with pytest.raises(BudgetError, match="points3D.txt: parsing these points"):
        load_scene(root)
    monkeypatch.setenv("FIT3D_HUB_MAX_BYTES", "200KB")
    scene = load_scene(root)
    scene.points = np.zeros((100_000, 3), np.float32)
    scene.point_colors = np.zeros((100_000, 3), np.float32)
    with pytest.raises(BudgetError, match="100000 initial points.*--max-points"):
        FeatureGaussians.initialise(scene, feature_dim=64, teacher_dim=32, sh_degree=3)


def test_features_refuses_an_image_over_the_token_cap(tmp_path, monkeypatch, capsys):
    from PIL import Image

    import fit3d_hub.cli as cli
    from fit3d_hub import FiT3D
    from fit3d_hub.tiny import demo_backbone

    FiT3D(demo_backbone(0).original, demo_backbone(1).original).save_pretrained(tmp_path / "m")
    Image.new("RGB", (96, 64), (10, 20, 30)).save(tmp_path / "big.png")
    monkeypatch.setattr(cli, "MAX_FEATURE_TOKENS", 50)  # 96x64 at patch 8: 96 tokens
    args = ["features", str(tmp_path / "big.png"), "--model", str(tmp_path / "m"), "--output",
            str(tmp_path / "out.png")]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "96x64 would be 96 tokens, over 50; pass --size" in err[0]
    assert not (tmp_path / "out.png").exists()
    assert cli.main([*args, "--size", "32"]) == 0 and (tmp_path / "out.png").is_file()
