"""The feed-forward lifter: gradient separation (as Stage 1's), geometry on the rays, the cost
volume, training (resume, NaN stop, settings check), lifting into Stage 1's format, Stage 2
on its targets, and bad input."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from fit3d_hub import FiT3D, load_fit3d
from fit3d_hub.render.torch_rasterizer import quat_to_rotmat
from scenes.load import load_scene
from scenes.synthetic import generate
from training.fit3d.feedforward.cli import lift_main, main
from training.fit3d.feedforward.data import load_pooled_scene
from training.fit3d.feedforward.model import (
    FeedForwardLifter,
    LifterShape,
    cell_depth,
    plane_sweep,
    rotmat_to_quat,
)
from training.fit3d.feedforward.trainer import LifterTraining
from training.fit3d.finetune.config import FinetuneConfig
from training.fit3d.finetune.run import run_finetune
from training.fit3d.lift.record import load_lifted, output_path

TRAIN = ["--backend", "torch", "--steps", "6", "--warmup-steps", "2", "--lr", "1e-3",
         "--feature-dim", "8", "--width", "8", "--depth-candidates", "8", "--save-every", "3"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    from helpers import tiny_vit

    root = tmp_path_factory.mktemp("ff")
    generate(root / "scenes", scenes=3, views=6, size=24, seed=0)
    FiT3D(tiny_vit(0), tiny_vit(1)).save_pretrained(root / "model")
    return root


@pytest.fixture(scope="module")
def teacher(root):
    return load_fit3d(root / "model", mode="original")


@pytest.mark.parametrize("depth", ["sensor", "predicted"])
def test_rgb_trains_only_geometry_and_features_only_features(root, teacher, depth):
    scene = load_pooled_scene(root / "scenes" / "scene_000", teacher, downscale=1.0,
                              holdout_every=0, needs_depth=True)
    torch.manual_seed(0)
    lifter = FeedForwardLifter(LifterShape(teacher_dim=32, feature_dim=8, width=8,
                                           depth=depth, depth_candidates=8))
    model = LifterTraining(lifter, "torch", 0.2)
    l_rgb, l_feat, _ = model(scene.context([0, 1]), scene.context([2]))

    def grads(modules):
        return [p.grad for m in modules for p in m.parameters()]

    l_feat.backward(retain_graph=True)
    assert all(g is None or torch.count_nonzero(g) == 0 for g in grads(lifter.geometry_modules()))
    assert all(g is not None and torch.count_nonzero(g) > 0
               for g in grads(lifter.feature_modules()))
    lifter.zero_grad(set_to_none=True)
    l_rgb.backward()
    assert all(g is None or torch.count_nonzero(g) == 0 for g in grads(lifter.feature_modules()))
    geometry = grads(lifter.geometry_modules())
    assert sum(g is not None and torch.count_nonzero(g) > 0 for g in geometry) == len(geometry)


def test_gaussians_sit_on_their_cells_rays_at_sensor_depth(root, teacher):
    scene = load_pooled_scene(root / "scenes" / "scene_000", teacher, downscale=1.0,
                              holdout_every=0, needs_depth=True)
    torch.manual_seed(0)
    lifter = FeedForwardLifter(LifterShape(teacher_dim=32, feature_dim=8, width=8, stride=2))
    with torch.no_grad():
        g = lifter(scene.context([3]))
    depth, _ = cell_depth(scene.depth[3:4], 2)
    cam = g.means @ scene.viewmats[3, :3, :3].T + scene.viewmats[3, :3, 3]
    torch.testing.assert_close(cam[:, 2], depth.reshape(-1), rtol=1e-4, atol=1e-4)
    K = scene.Ks[3]
    u = K[0, 0] * cam[:, 0] / cam[:, 2] + K[0, 2]
    v = K[1, 1] * cam[:, 1] / cam[:, 2] + K[1, 2]
    h, w = depth.shape[-2:]
    cells_u = torch.arange(w).repeat(h).float()
    cells_v = torch.arange(h).repeat_interleave(w).float()
    assert bool(((u / 2 >= cells_u - 1e-4) & (u / 2 <= cells_u + 1 + 1e-4)).all())
    assert bool(((v / 2 >= cells_v - 1e-4) & (v / 2 <= cells_v + 1 + 1e-4)).all())
    # quaternions are unit and describe the world rotations the renderer gets
    torch.testing.assert_close(g.quats.norm(dim=-1), torch.ones(len(g.quats)))


def test_rotmat_to_quat_inverts_quat_to_rotmat():
    q = torch.nn.functional.normalize(torch.randn(500, 4, dtype=torch.float64), dim=-1)
    back = rotmat_to_quat(quat_to_rotmat(q))
    torch.testing.assert_close(back, torch.where(q[:, :1] < 0, -q, q))


def test_the_cost_volume_peaks_near_the_true_depth(root, teacher):
    """With the images themselves as features, the best-correlating depth plane of most cells
    is the one nearest their true depth (chance: 1 in 48)."""
    scene = load_pooled_scene(root / "scenes" / "scene_000", teacher, downscale=1.0,
                              holdout_every=0, needs_depth=True)
    feats = scene.images[[0, 1]] - scene.images[[0, 1]].mean((2, 3), keepdim=True)
    candidates = 1 / torch.linspace(1 / 8.0, 1 / 0.5, 48)
    cost = plane_sweep(feats, scene.viewmats[[0, 1]], scene.Ks[[0, 1]], 1, candidates,
                       [[1], [0]])
    truth = scene.depth[0]
    best = candidates[cost[0].argmax(0)]
    nearest = candidates[(candidates[:, None, None] - truth[None]).abs().argmin(0)]
    visible = truth > 0
    hit = ((best - nearest).abs() <= 0.15 * nearest)[visible].float().mean()
    assert float(hit) > 0.3, float(hit)


def test_trains_resumes_lifts_and_stage2_trains_on_its_targets(root, tmp_path, capsys):
    args = ["--scenes", str(root / "scenes"), "--backbone", str(root / "model"),
            "--holdout-scenes", "1", *TRAIN]
    assert main([*args, "--output", str(tmp_path / "straight")]) == 0
    assert main([*args, "--output", str(tmp_path / "resumed"), "--steps", "3"]) == 0
    assert main([*args, "--output", str(tmp_path / "resumed"), "--resume"]) == 0
    a = (tmp_path / "straight" / "lifter.safetensors").read_bytes()
    b = (tmp_path / "resumed" / "lifter.safetensors").read_bytes()
    assert a == b  # weights and record alike
    summary = json.loads((tmp_path / "straight" / "training_summary.json").read_text())
    assert list(summary["held_out"]) == ["scene_002"]  # never trained on, measured
    held = summary["held_out"]["scene_002"]
    assert math.isfinite(held["psnr"]) and held["feature_l1"] > 0
    # another stride on resume is refused
    code = main([*args, "--output", str(tmp_path / "resumed"), "--resume", "--stride", "4",
                 "--steps", "9"])
    assert code == 2 and "(stride: 2 -> 4)" in capsys.readouterr().err

    lifted = tmp_path / "lifted"
    assert lift_main(["--model", str(tmp_path / "straight"), "--scenes",
                      str(root / "scenes"), "--output", str(lifted), "--backend", "torch",
                      "--holdout-every", "3"]) == 0
    gaussians, meta = load_lifted(output_path(lifted, "scene_002"))
    assert meta.lifter == "feedforward" and meta.sh_degree == 0
    assert meta.training_views == [1, 2, 4, 5]
    assert gaussians.num_gaussians == 4 * 9 * 12  # 4 context views of 12x9 cells
    assert meta.metrics["seconds"] > 0 and math.isfinite(meta.metrics["psnr"])
    run_finetune(lifted, str(root / "model"), tmp_path / "backbone",
                 FinetuneConfig(epochs=1, save_every=0), backend="torch", progress=False,
                 log=lambda _: None)
    config = json.loads((tmp_path / "backbone" / "config.json").read_text())
    assert config["fit3d"]["method"] == "feedforward"
    assert set(config["fit3d"]["training"]["lifters"].values()) == {"feedforward"}
    model = load_fit3d(tmp_path / "backbone")
    assert model(torch.randn(1, 3, 28, 28)).shape[1] == 64


def test_nan_loss_stops_with_one_line(root, tmp_path, capsys, monkeypatch):
    import training.fit3d.feedforward.trainer as trainer

    monkeypatch.setattr(trainer, "rgb_loss", lambda *a, **k: torch.tensor(float("nan")))
    code = main(["--scenes", str(root / "scenes"), "--backbone", str(root / "model"),
                 "--output", str(tmp_path / "o"), *TRAIN])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and "loss became nan at step 1" in err[-1] and "scene_00" in err[-1]
    assert not (tmp_path / "o" / "lifter.safetensors").exists()


def test_bad_input_is_one_line_naming_the_scene_view_or_file(root, tmp_path, capsys):
    from helpers import tiny_vit

    lifter = tmp_path / "lifter"
    assert main(["--scenes", str(root / "scenes"), "--backbone", str(root / "model"),
                 "--output", str(lifter), "--depth", "predicted", *TRAIN]) == 0
    capsys.readouterr()
    # too few context views for a cost volume
    code = lift_main(["--model", str(lifter), "--scenes", str(root / "scenes" / "scene_000"),
                      "--output", str(tmp_path / "l1"), "--max-context", "1"])
    err = capsys.readouterr().err
    assert code == 1 and "scene_000: 1 context view(s); this lifter (predicted depth) needs " \
        "at least 2" in err
    # a camera with a non-finite value: the nerfstudio reader names the field ...
    bad = tmp_path / "bad_scene"
    shutil.copytree(root / "scenes" / "scene_001", bad)
    meta = json.loads((bad / "transforms.json").read_text())
    meta["frames"][2]["cx"] = float("nan")
    (bad / "transforms.json").write_text(json.dumps(meta))
    code = lift_main(["--model", str(lifter), "--scenes", str(bad), "--output",
                      str(tmp_path / "l2")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and "bad_scene/transforms.json: frames[2]: field 'cx' must be a finite " \
        "number" in err[-1], err
    # ... and a COLMAP model with a NaN focal length is refused by the scene reader, naming
    # the frame and the field
    from test_scene_readers import _write_colmap

    colmap = tmp_path / "colmap_scene"
    shutil.copytree(root / "scenes" / "scene_001" / "images", colmap / "images")
    _write_colmap(load_scene(root / "scenes" / "scene_001"), colmap / "sparse" / "0", False)
    cameras = colmap / "sparse" / "0" / "cameras.txt"
    fields = cameras.read_text().splitlines()[1].split()
    fields[4] = "nan"  # fx
    cameras.write_text(" ".join(fields) + "\n")
    code = lift_main(["--model", str(lifter), "--scenes", str(colmap), "--output",
                      str(tmp_path / "l2b")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and "colmap_scene: frame 'frame_0000': focal length fx=nan" in err[-1], err
    # a teacher of another width
    FiT3D(tiny_vit(0, embed_dim=48), tiny_vit(1, embed_dim=48)).save_pretrained(tmp_path / "w48")
    code = lift_main(["--model", str(lifter), "--scenes", str(root / "scenes"), "--output",
                      str(tmp_path / "l3"), "--backbone", str(tmp_path / "w48")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1
    assert f"{lifter / 'lifter.safetensors'}: trained for a teacher of width 32" in err[0]
    # not a lifter folder
    code = lift_main(["--model", str(tmp_path), "--scenes", str(root / "scenes"), "--output",
                      str(tmp_path / "l4")])
    assert code == 1 and "lifter.safetensors: missing" in capsys.readouterr().err
    # a sensor-depth lifter on a scene without depth maps
    nodepth = tmp_path / "nodepth"
    shutil.copytree(root / "scenes" / "scene_001", nodepth)
    meta = json.loads((nodepth / "transforms.json").read_text())
    for frame in meta["frames"]:
        frame.pop("depth_file_path", None)
    (nodepth / "transforms.json").write_text(json.dumps(meta))
    sensor = tmp_path / "sensor"
    assert main(["--scenes", str(root / "scenes"), "--backbone", str(root / "model"),
                 "--output", str(sensor), *TRAIN]) == 0
    capsys.readouterr()
    code = lift_main(["--model", str(sensor), "--scenes", str(nodepth), "--output",
                      str(tmp_path / "l5")])
    err = capsys.readouterr().err
    assert code == 1 and "nodepth: view" in err and "has no depth map" in err


@pytest.mark.parametrize("args, message", [
    (["--context-views", "0"], "--context-views must be at least 1"),
    (["--depth", "predicted", "--context-views", "1"], "--depth predicted needs --context-views"),
    (["--near", "5", "--far", "1"], "--near and --far must satisfy"),
])
def test_bad_flags_are_one_line_exit_2(root, tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exc:
        main(["--scenes", str(root / "scenes"), "--backbone", str(root / "model"), "--output",
              str(tmp_path / "o"), *TRAIN, *args])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and message in err and err.count("\n") == 1


def test_too_few_views_for_training_names_the_scene(tmp_path, capsys):
    from helpers import tiny_vit

    generate(tmp_path / "scenes", scenes=1, views=2, size=24, seed=3)
    FiT3D(tiny_vit(0), tiny_vit(1)).save_pretrained(tmp_path / "model")
    code = main(["--scenes", str(tmp_path / "scenes"), "--backbone", str(tmp_path / "model"),
                 "--output", str(tmp_path / "o"), "--context-views", "2", *TRAIN])
    err = capsys.readouterr().err
    assert code == 1 and "scene_000: 2 trainable views; the lifter needs 2 context + 1 " \
        "target views" in err


def test_numbers_do_not_depend_on_the_input_order_of_scenes(root):
    """The scene pool is sorted, so a text file listing scenes in another order trains the
    same lifter (the held-out scenes are the last by name)."""
    from training.fit3d.feedforward.run import split_scenes

    paths = sorted((root / "scenes").iterdir())
    assert split_scenes(paths[::-1], 1) == (paths[:2], paths[2:])
