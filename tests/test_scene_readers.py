"""Scene readers: nerfstudio, COLMAP text/binary, point clouds, the camera convention."""

from __future__ import annotations

import json
import shutil
import struct

import numpy as np
import pytest
from PIL import Image

from scenes.cameras import Camera, opencv_w2c_to_opengl_c2w, opengl_c2w_to_opencv_w2c
from scenes.colmap import qvec_to_rotmat
from scenes.io import load_depth
from scenes.load import load_scene, scene_paths
from scenes.points import read_points
from scenes.synthetic import generate
from scenes.types import SceneError


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("syn"), scenes=1, views=6, size=40, seed=3)[0]


def _copy(src, tmp_path):
    dst = tmp_path / "scene"
    shutil.copytree(src, dst)
    return dst


def test_opengl_to_opencv_on_a_known_camera():
    # OpenGL camera at z = 5 looking down -z at the origin, y up.
    c2w = np.eye(4)
    c2w[2, 3] = 5.0
    cam = Camera(100.0, 100.0, 50.0, 40.0, 100, 80, opengl_c2w_to_opencv_w2c(c2w))
    uv, z = cam.project(np.array([[0.0, 0, 0], [1.0, 0, 0], [0.0, 1, 0]]))
    np.testing.assert_allclose(uv[0], [50.0, 40.0])
    np.testing.assert_allclose(z, [5.0, 5.0, 5.0])
    assert uv[1, 0] > 50.0  # world +x is to the right
    assert uv[2, 1] < 40.0  # world +y (up in OpenGL) is towards the top row
    np.testing.assert_allclose(cam.center, [0, 0, 5])
    np.testing.assert_allclose(opencv_w2c_to_opengl_c2w(cam.w2c), c2w, atol=1e-12)


def test_synthetic_scene_reads_back_with_consistent_depth(synthetic):
    scene = load_scene(synthetic)
    assert len(scene.frames) == 6 and scene.points.shape[1] == 3
    a, b = scene.frames[0], scene.frames[1]
    depth_a = load_depth(a.depth_path, a.depth_scale)
    depth_b = load_depth(b.depth_path, b.depth_scale)
    ys, xs = np.mgrid[0:depth_a.shape[0]:3, 0:depth_a.shape[1]:3]
    uv = np.stack([xs.ravel() + 0.5, ys.ravel() + 0.5], -1)
    world = a.camera.unproject(uv, depth_a[ys.ravel(), xs.ravel()])
    uv_b, z_b = b.camera.project(world)
    cols, rows = np.floor(uv_b[:, 0]).astype(int), np.floor(uv_b[:, 1]).astype(int)
    inside = (cols >= 0) & (cols < depth_b.shape[1]) & (rows >= 0) & (rows < depth_b.shape[0])
    rel = np.abs(depth_b[rows[inside], cols[inside]] - z_b[inside]) / z_b[inside]
    # Most points of view A that fall inside view B land on B's own depth (within the pixel
    # quantisation at grazing angles); the rest are occluded in B. A wrong pose convention
    # (a flipped axis, a transposed rotation) drops this far below half.
    assert inside.sum() > 50 and (rel < 0.05).mean() > 0.7


def _transforms(scene_dir):
    return json.loads((scene_dir / "transforms.json").read_text())


def _write(scene_dir, meta):
    (scene_dir / "transforms.json").write_text(json.dumps(meta))


def test_per_frame_intrinsics(synthetic, tmp_path):
    scene_dir = _copy(synthetic, tmp_path)
    meta = _transforms(scene_dir)
    for frame in meta["frames"]:
        frame.update(fl_x=30.0, fl_y=31.0, cx=20.0, cy=15.0, w=40, h=30)
    for key in ("fl_x", "fl_y", "cx", "cy", "w", "h"):
        meta.pop(key)
    _write(scene_dir, meta)
    cam = load_scene(scene_dir).frames[2].camera
    assert (cam.fx, cam.fy, cam.width, cam.height) == (30.0, 31.0, 40, 30)


@pytest.mark.parametrize("edit, message", [
    (lambda m, d: (d / "images" / "frame_0001.png").unlink(),
     "frame_0001.png: image file is missing"),
    (lambda m, d: m["frames"][2].update(transform_matrix=[[float("nan")] * 4] * 4),
     "frames[2]: field 'transform_matrix' has non-finite values"),
    (lambda m, d: m["frames"][1].update(transform_matrix=[[0.0] * 4] * 4),
     "frames[1]: field 'transform_matrix' is not invertible"),
    (lambda m, d: m["frames"][0].update(transform_matrix=[1, 2, 3]),
     "frames[0]: field 'transform_matrix' must be a 4x4"),
    (lambda m, d: m.update(w=41), "is 40x30 but the intrinsics say w=41, h=30"),
    (lambda m, d: m.update(frames=[]), "empty scene"),
    (lambda m, d: m.pop("fl_x"), "frames[0]: field 'fl_x' must be a finite number"),
    (lambda m, d: m.update(k1=0.1), "distortion ['k1'] is non-zero"),
    (lambda m, d: m["frames"][0].pop("file_path"), "frames[0]: field 'file_path'"),
])
def test_bad_scenes_name_file_and_field(synthetic, tmp_path, edit, message):
    scene_dir = _copy(synthetic, tmp_path)
    meta = _transforms(scene_dir)
    edit(meta, scene_dir)
    _write(scene_dir, meta)
    with pytest.raises(SceneError) as err:
        load_scene(scene_dir)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_malformed_json(tmp_path):
    (tmp_path / "transforms.json").write_text("{ nope")
    with pytest.raises(SceneError, match="transforms.json: malformed JSON"):
        load_scene(tmp_path)


def test_folder_without_a_scene(tmp_path):
    with pytest.raises(SceneError) as err:
        load_scene(tmp_path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{tmp_path}: not a scene folder")
    for expected in ("transforms.json", "transform_matrix", "transforms_train.json", "images/",
                     "test_frames", "sparse/0"):
        assert expected in message


def _rotmat_to_qvec(rot):
    w = np.sqrt(max(1e-12, 1 + rot[0, 0] + rot[1, 1] + rot[2, 2])) / 2
    return np.array([w, (rot[2, 1] - rot[1, 2]) / (4 * w), (rot[0, 2] - rot[2, 0]) / (4 * w),
                     (rot[1, 0] - rot[0, 1]) / (4 * w)])


def _write_colmap(scene, folder, binary):
    """A COLMAP model of ``scene`` (the writer side of the format, for tests)."""
    folder.mkdir(parents=True)
    cam = scene.frames[0].camera
    images = [(i + 1, _rotmat_to_qvec(f.camera.w2c[:3, :3]), f.camera.w2c[:3, 3],
               f.image_path.name) for i, f in enumerate(scene.frames)]
    if not binary:
        (folder / "cameras.txt").write_text(
            f"# comment\n1 PINHOLE {cam.width} {cam.height} {cam.fx} {cam.fy} {cam.cx} {cam.cy}\n")
        lines = []
        for image_id, q, t, name in images:
            lines += [f"{image_id} {' '.join(map(str, q))} {' '.join(map(str, t))} 1 {name}",
                      "1.0 2.0 -1"]
        (folder / "images.txt").write_text("\n".join(lines) + "\n")
        pts = [f"{i + 1} {p[0]} {p[1]} {p[2]} 10 20 30 0.5 1 0"
               for i, p in enumerate(scene.points[:50])]
        (folder / "points3D.txt").write_text("\n".join(pts) + "\n")
        return
    with open(folder / "cameras.bin", "wb") as fh:
        fh.write(struct.pack("<QiiQQ", 1, 1, 1, cam.width, cam.height))
        fh.write(struct.pack("<4d", cam.fx, cam.fy, cam.cx, cam.cy))
    with open(folder / "images.bin", "wb") as fh:
        fh.write(struct.pack("<Q", len(images)))
        for image_id, q, t, name in images:
            fh.write(struct.pack("<i7di", image_id, *q, *t, 1))
            fh.write(name.encode() + b"\x00")
            fh.write(struct.pack("<Q", 1) + struct.pack("<ddq", 1.0, 2.0, -1))
    with open(folder / "points3D.bin", "wb") as fh:
        fh.write(struct.pack("<Q", 50))
        for i, p in enumerate(scene.points[:50]):
            fh.write(struct.pack("<Q3d3Bd", i + 1, *p, 10, 20, 30, 0.5))
            fh.write(struct.pack("<Q", 1) + struct.pack("<ii", 1, 0))


@pytest.mark.parametrize("binary", [False, True])
def test_colmap_models_match_the_nerfstudio_scene(synthetic, tmp_path, binary):
    reference = load_scene(synthetic)
    root = tmp_path / "colmap_scene"
    shutil.copytree(synthetic / "images", root / "images")
    _write_colmap(reference, root / "sparse" / "0", binary)
    scene = load_scene(root)
    assert scene.meta["format"] == "colmap" and len(scene.frames) == len(reference.frames)
    for got, want in zip(scene.frames, reference.frames, strict=True):
        np.testing.assert_allclose(got.camera.w2c, want.camera.w2c, atol=1e-6)
        assert got.camera.K.tolist() == want.camera.K.tolist()
    np.testing.assert_allclose(scene.points, reference.points[:50], atol=1e-4)
    np.testing.assert_allclose(scene.point_colors[0], [10 / 255, 20 / 255, 30 / 255], atol=1e-6)


def test_colmap_distorted_camera_is_refused(synthetic, tmp_path):
    folder = tmp_path / "sparse" / "0"
    folder.mkdir(parents=True)
    (folder / "cameras.txt").write_text("1 OPENCV 40 30 30 30 20 15 0.1 0 0 0\n")
    (folder / "images.txt").write_text("")
    with pytest.raises(SceneError, match="camera model OPENCV has distortion"):
        load_scene(tmp_path)


def test_colmap_truncated_binary(synthetic, tmp_path):
    reference = load_scene(synthetic)
    root = tmp_path / "s"
    shutil.copytree(synthetic / "images", root / "images")
    _write_colmap(reference, root / "sparse" / "0", binary=True)
    data = (root / "sparse" / "0" / "images.bin").read_bytes()
    (root / "sparse" / "0" / "images.bin").write_bytes(data[:40])
    with pytest.raises(SceneError, match="images.bin: truncated"):
        load_scene(root)


def test_qvec_rotation_round_trip():
    rot = qvec_to_rotmat(np.array([0.9, 0.1, -0.3, 0.2]))
    np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(qvec_to_rotmat(_rotmat_to_qvec(rot)), rot, atol=1e-9)


@pytest.mark.parametrize("binary", [False, True])
def test_ply_points(tmp_path, binary):
    xyz = np.array([[0.0, 1, 2], [3, 4, 5]], np.float32)
    rgb = np.array([[255, 0, 0], [0, 128, 255]], np.uint8)
    head = ("ply\nformat {} 1.0\nelement vertex 2\nproperty float x\nproperty float y\n"
            "property float z\nproperty uchar red\nproperty uchar green\nproperty uchar blue\n"
            "end_header\n").format("binary_little_endian" if binary else "ascii")
    if binary:
        rows = b"".join(struct.pack("<3f3B", *p, *c) for p, c in zip(xyz, rgb, strict=True))
        (tmp_path / "p.ply").write_bytes(head.encode() + rows)
    else:
        rows = "".join(f"{p[0]} {p[1]} {p[2]} {c[0]} {c[1]} {c[2]}\n"
                       for p, c in zip(xyz, rgb, strict=True))
        (tmp_path / "p.ply").write_text(head + rows)
    points, colors = read_points(tmp_path / "p.ply")
    np.testing.assert_allclose(points, xyz)
    np.testing.assert_allclose(colors, rgb / 255.0, atol=1e-6)


def test_scene_paths(synthetic, tmp_path):
    assert scene_paths(synthetic) == [synthetic]
    assert scene_paths(synthetic.parent) == [synthetic]
    listing = tmp_path / "scenes.txt"
    listing.write_text(f"# one scene\n{synthetic}\n")
    assert scene_paths(listing) == [synthetic]
    with pytest.raises(SceneError, match="neither a folder"):
        scene_paths(tmp_path / "missing")


def test_mask_and_depth_files_must_exist(synthetic, tmp_path):
    scene_dir = _copy(synthetic, tmp_path)
    meta = _transforms(scene_dir)
    meta["frames"][0]["mask_path"] = "masks/none.png"
    _write(scene_dir, meta)
    with pytest.raises(SceneError, match="none.png: mask file of frame 'frame_0000' is missing"):
        load_scene(scene_dir)
    Image.new("L", (40, 30), 255).save(scene_dir / "mask.png")
    meta["frames"][0]["mask_path"] = "mask.png"
    _write(scene_dir, meta)
    assert load_scene(scene_dir).frames[0].mask_path.name == "mask.png"


def test_scannetpp_layout_of_the_authors(tmp_path):
    """A tiny scene in exactly the layout the FiT3D authors' preprocessing writes: JPEG
    images/, masks/<stem>.png, transforms_train.json (frames + test_frames, poses in
    nerfstudio's permuted world) and points3D.txt in COLMAP's world."""
    spp = generate(tmp_path / "spp", scenes=1, views=6, size=40, seed=3, layout="scannetpp")[0]
    ref = generate(tmp_path / "ref", scenes=1, views=6, size=40, seed=3)[0]
    assert sorted(p.name for p in spp.iterdir()) == ["depth", "images", "masks", "points3D.txt",
                                                     "transforms_train.json"]
    meta = json.loads((spp / "transforms_train.json").read_text())
    assert meta["frames"][0]["file_path"] == "frame_0001.JPG"  # bare names, under images/
    scene, truth = load_scene(spp), load_scene(ref)
    assert scene.meta["format"] == "scannetpp"
    by_name = {f.name: f for f in scene.frames}
    assert [f.name for f in scene.frames if f.split == "test"] == ["frame_0000", "frame_0004"]
    assert len(scene.frames) == 6 and set(by_name) == {f.name for f in truth.frames}
    for frame in truth.frames:
        mine = by_name[frame.name]
        assert mine.image_path == spp / "images" / f"{frame.name}.JPG"
        assert mine.mask_path == spp / "masks" / f"{frame.name}.png"
        assert mine.depth_path == spp / "depth" / f"{frame.name}.png"
        # points3D.txt (COLMAP world) lands where the permuted-world poses look
        uv, z = mine.camera.project(scene.points)
        uv_ref, z_ref = frame.camera.project(truth.points)
        np.testing.assert_allclose(uv, uv_ref, atol=1e-3)
        np.testing.assert_allclose(z, z_ref, atol=1e-5)
    mask = np.asarray(Image.open(by_name["frame_0001"].mask_path))
    assert (mask == 0).any() and (mask == 255).any()


def test_scannetpp_layout_errors_name_file_and_field(tmp_path):
    spp = generate(tmp_path, scenes=1, views=4, size=40, seed=3, layout="scannetpp")[0]
    (spp / "images" / "frame_0002.JPG").unlink()
    with pytest.raises(SceneError, match=r"transforms_train.json: frames\[1\]: field "
                                         r"'file_path' names .*frame_0002.JPG"):
        load_scene(spp)
    shutil.rmtree(spp / "images")
    with pytest.raises(SceneError, match="ScanNet\\+\\+ layout keeps its images in"):
        load_scene(spp)
