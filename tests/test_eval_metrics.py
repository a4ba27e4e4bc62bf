"""Evaluation metrics against hand-computed values, and the correspondence evaluator."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from eval.correspondence import (
    ROWS,
    PairResult,
    evaluate_pair,
    main,
    nearest_neighbours,
    scene_tasks,
    select_pairs,
    summarise,
)
from eval.metrics import (
    confusion_matrix,
    correspondence_metrics,
    depth_metrics,
    segmentation_metrics,
)
from fit3d_hub import FiT3DFeatures
from fit3d_hub.transforms import FiT3DTransform
from scenes.cameras import relative_rotation_degrees
from scenes.load import load_scene
from scenes.types import SceneError


def test_segmentation_metrics_by_hand():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 255]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 3, 3]])  # the 255 pixels are ignored
    conf = confusion_matrix(pred, target, num_classes=4)
    assert conf.sum() == 6 and conf[0, 0] == 1 and conf[0, 1] == 1 and conf[2, 0] == 1
    m = segmentation_metrics(conf)
    # IoU: class 0 = 1/3, class 1 = 2/3, class 2 = 1/2; class 3 never occurs: left out
    assert m["mIoU"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3 * 100)
    # accuracy: class 0 = 1/2, class 1 = 2/2, class 2 = 1/2
    assert m["mAcc"] == pytest.approx((0.5 + 1 + 0.5) / 3 * 100)
    assert m["aAcc"] == pytest.approx(4 / 6 * 100)


def test_class_predicted_but_absent_counts_as_zero_iou():
    conf = confusion_matrix(torch.tensor([1, 1]), torch.tensor([0, 0]), num_classes=2)
    m = segmentation_metrics(conf)
    assert m["mIoU"] == 0.0 and m["mAcc"] == 0.0  # class 1: IoU 0/2 = 0; accuracy n/a


def test_depth_metrics_by_hand():
    gt = torch.tensor([[1.0, 2.0], [4.0, 0.0]])  # 0 = no ground truth
    pred = torch.tensor([[1.0, 2.5], [2.0, 9.0]])
    m = depth_metrics(pred, gt, min_depth=1e-3, max_depth=10.0)
    assert m["RMSE"] == pytest.approx(np.sqrt((0 + 0.25 + 4) / 3))
    assert m["AbsRel"] == pytest.approx((0 + 0.25 + 0.5) / 3)
    # max(p/g, g/p): 1, 1.25, 2 -> below 1.25: 1 of 3; below 1.5625: 2; below 1.953: 2
    assert m["delta1"] == pytest.approx(100 / 3)
    assert m["delta2"] == pytest.approx(200 / 3) and m["delta3"] == pytest.approx(200 / 3)
    with pytest.raises(ValueError, match="no pixel"):
        depth_metrics(pred, torch.zeros(2, 2), 1e-3, 10.0)


def test_identity_matcher_scores_perfectly_and_shift_costs_what_it_should():
    gt = np.array([[10.5, 20.5], [30.5, 40.5], [50.5, 5.5]])
    perfect = correspondence_metrics(gt, gt, short_side=100)
    assert perfect["APE"] == 0 and perfect["PCDP@0.05"] == 100
    shifted = correspondence_metrics(gt + np.array([6.0, 8.0]), gt, short_side=100)  # 10 px off
    assert shifted["APE"] == pytest.approx(10.0)
    assert shifted["PCDP@0.05"] == 0 and shifted["PCDP@0.1"] == 0 and shifted["PCDP@0.2"] == 100


def test_relative_rotation():
    a = np.eye(4)
    b = np.eye(4)
    b[:3, :3] = [[0, -1, 0], [1, 0, 0], [0, 0, 1]]
    assert relative_rotation_degrees(a, b) == pytest.approx(90.0)
    assert select_pairs([a, b, a], 10, 45.0, 0) == [(0, 2, 0.0)]


def test_nearest_neighbour_of_identical_maps_is_the_same_pixel():
    torch.manual_seed(0)
    feats = torch.randn(16, 6, 8)  # a distinct vector per token
    uv = np.array([[x + 0.5, y + 0.5] for y in range(0, 48, 8) for x in range(0, 64, 8)])
    uv = uv + 3.5  # token centres of a 64x48 image with 8 px tokens
    pred = nearest_neighbours(feats, feats, uv, (64, 48), (64, 48))
    # every query lands in its own 8x8 token (pixels near a token centre, or at the border
    # where bilinear upsampling clamps, carry exactly that token's feature)
    assert np.abs(pred - uv).max() <= 4.0


def test_summary_pools_and_bins_by_rotation():
    gt = np.array([[10.0, 10.0], [20.0, 20.0]])
    near = PairResult(10.0, 100.0, gt, {v: gt for v in ROWS})
    far = PairResult(100.0, 100.0, gt, {v: gt + np.array([0.0, 30.0]) for v in ROWS})
    s = summarise([near, far])
    assert s["overall"]["concat"]["APE"] == pytest.approx(15.0)
    assert s["by_rotation"]["0-30"]["concat"]["APE"] == 0
    assert s["by_rotation"]["90-120"]["finetuned"]["PCDP@0.2"] == 0
    assert s["curves"]["original"]["0.2"] == 50.0


def test_correspondence_cli_on_synthetic_scene_and_stereo(tmp_path, tiny_pair, capsys):
    from PIL import Image

    from fit3d_hub import FiT3D
    from scenes.synthetic import generate

    FiT3D(*tiny_pair).save_pretrained(tmp_path / "model")
    generate(tmp_path / "scenes", scenes=1, views=4, size=56, seed=0)
    out = tmp_path / "res" / "corr.json"
    code = main(["--model", str(tmp_path / "model"), "--scenes", str(tmp_path / "scenes"),
                 "--pairs", "3", "--queries", "50", "--output", str(out)])
    assert code == 0
    payload = json.loads(out.read_text())
    rows = {(r["metric"], r["variant"]) for r in payload["results"]}
    assert ("APE", "concat") in rows and ("PCDP@0.1", "original") in rows
    # every table carries what no learned features would get
    assert ("APE", "zero-motion") in rows and ("PCDP@0.1", "identity") in rows
    table = out.with_suffix(".md").read_text()
    assert out.with_suffix(".png").exists() and "| concat |" in table
    assert "| zero-motion |" in table and "| identity |" in table
    # stereo: the right image is the left shifted by 4 px, disparity 4 everywhere
    rng = np.random.default_rng(0)
    left = rng.integers(0, 255, (28, 42, 3), dtype=np.uint8)
    right = np.roll(left, -4, axis=1)
    stereo = tmp_path / "stereo"
    stereo.mkdir()
    Image.fromarray(left).save(stereo / "a_left.png")
    Image.fromarray(right).save(stereo / "a_right.png")
    np.save(stereo / "a_disp.npy", np.full((28, 42), 4.0))
    assert main(["--model", str(tmp_path / "model"), "--stereo", str(stereo),
                 "--queries", "30", "--output", str(tmp_path / "stereo.json")]) == 0
    stereo_rows = {r["variant"]: r["value"] for r in
                   json.loads((tmp_path / "stereo.json").read_text())["results"]
                   if r["metric"] == "APE"}
    # zero motion is off by exactly the 4 px disparity, divided by the short side 28
    assert stereo_rows["zero-motion"] == pytest.approx(100 * 4 / 28, abs=1e-3)
    np.save(stereo / "a_disp.npy", np.full((20, 42), 4.0))
    assert main(["--model", str(tmp_path / "model"), "--stereo", str(stereo)]) == 1  # bad data
    assert "a_disp.npy: disparity is 42x20 but a_left.png is 42x28" in capsys.readouterr().err


def test_baselines_zero_motion_and_identity_features():
    rng = np.random.default_rng(1)
    image_a = rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)
    image_b = np.roll(image_a, 3, axis=1)  # content moves 3 px right
    uv_a = np.stack([np.arange(5, 20) + 0.5, np.full(15, 10.5)], -1)
    uv_b = uv_a + np.array([3.0, 0.0])

    class Null(torch.nn.Module):  # a model whose features are constant: matches are arbitrary
        patch_size = 2

        def forward_features(self, x):
            f = torch.ones(1, 4, x.shape[-2] // 2, x.shape[-1] // 2)
            return FiT3DFeatures(torch.cat([f, f], 1), f, f, torch.zeros(1, 4))

    model = Null()
    model.register_parameter("p", torch.nn.Parameter(torch.zeros(1)))
    transform = FiT3DTransform((0, 0, 0), (1, 1, 1), 2)
    result = evaluate_pair(model, transform, image_a, image_b, uv_a, uv_b, 0.0)
    np.testing.assert_allclose(result.pred_uv["zero-motion"], uv_a)
    # distinct random colours: the raw image finds every shifted pixel
    np.testing.assert_allclose(result.pred_uv["identity"], uv_b)
    summary = summarise([result])
    assert summary["overall"]["identity"]["APE"] == 0.0
    assert summary["overall"]["zero-motion"]["APE"] == pytest.approx(100 * 3 / 20)


def test_pairs_come_from_test_frames_where_a_scene_has_them(tmp_path):
    from scenes.synthetic import generate

    spp = generate(tmp_path / "spp", scenes=1, views=9, size=40, seed=0, layout="scannetpp")
    tasks = scene_tasks(spp, pairs=10, max_rotation=180, seed=0)
    frames = load_scene(spp[0]).frames
    paired = {i for _, i, _, _ in tasks} | {j for _, _, j, _ in tasks}
    assert len(tasks) == 3 and {frames[k].name for k in paired} == \
        {"frame_0000", "frame_0004", "frame_0008"}  # the test_frames
    everything = scene_tasks(spp, pairs=50, max_rotation=180, seed=0, views="all")
    assert len({i for _, i, _, _ in everything} | {j for _, _, j, _ in everything}) > 3
    plain = generate(tmp_path / "plain", scenes=1, views=3, size=40, seed=0)
    with pytest.raises(SceneError, match="needs at least two test frames"):
        scene_tasks(plain, pairs=2, max_rotation=180, seed=0, views="test")
