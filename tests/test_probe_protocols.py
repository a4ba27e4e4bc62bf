"""The paper protocol of the linear probes: schedules, augmentations, testing, a tiny run."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from eval.augment import (
    depth_train_view,
    eval_mask,
    hsv_to_rgb,
    photometric_distortion,
    rescale_size,
    rgb_to_hsv,
    rotate,
    seg_train_view,
)
from eval.datasets import IGNORE, open_dataset
from eval.linear_probe import backbone_outputs, slide_logits, train_probe
from eval.linear_probe import main as probe_main
from eval.probe_heads import DepthHead, cross_entropy, gradient_loss, grouped_sig_loss, sig_loss
from eval.protocols import PAPER_DEPTH, PAPER_SEG, beta1_at, lr_at, quick_depth
from fit3d_hub import FiT3D
from fit3d_hub.results import load_results
from fit3d_hub.schema import MODES as VARIANTS


def test_schedules_follow_mmcv():
    seg = PAPER_SEG
    assert lr_at(seg, 0) == pytest.approx(seg.lr * seg.warmup_ratio)  # linear warm-up start
    assert lr_at(seg, seg.warmup_iters) == pytest.approx(seg.lr * (1 - 1500 / 40_000))
    assert lr_at(seg, seg.iterations) == 0.0  # poly, power 1, down to 0
    depth = PAPER_DEPTH["scannetpp"]
    halfway = lr_at(depth, depth.iterations // 2)
    floor = depth.lr * depth.min_lr_ratio
    assert halfway == pytest.approx(floor + 0.5 * (depth.lr - floor))  # cosine midpoint
    assert lr_at(depth, depth.iterations) == pytest.approx(floor)
    # OneCycle momentum: 0.95 -> 0.85 at 30% -> 0.95
    assert beta1_at(depth, 0) == pytest.approx(0.95)
    assert beta1_at(depth, int(0.3 * depth.iterations) - 1) == pytest.approx(0.85)
    assert beta1_at(depth, depth.iterations - 1) == pytest.approx(0.95)
    assert beta1_at(seg, 123) == 0.9  # no momentum schedule for segmentation


def test_rescale_into_the_2048_by_512_bound():
    assert rescale_size(480, 640, (2048, 512)) == (512, 683)
    assert rescale_size(100, 1000, (2048, 512)) == (205, 2048)  # the long side binds


def test_seg_training_view_keeps_image_and_label_aligned():
    rng = np.random.default_rng(0)
    label = (np.arange(40)[None, :] // 10).repeat(30, 0)  # four vertical stripes of classes
    image = np.stack([label * 60.0] * 3, -1)
    protocol = replace(PAPER_SEG, scale=(80, 30), ratio_range=(0.5, 2.0), crop=(24, 24),
                       photometric=False)
    for _ in range(20):
        img, lab = seg_train_view(image, label, protocol, rng)
        assert img.shape == (24, 24, 3) and lab.shape == (24, 24)
        known = lab != IGNORE
        # nearest-neighbour labels sit on the image's stripes (bilinear edges aside)
        inner = known & (np.abs(img[..., 0] - lab * 60.0) < 1e-3)
        assert inner.sum() > 0.5 * known.sum()
        assert (img[~known] == 0).all()  # padding: image 0, label ignored


def test_seg_padding_is_the_normalised_zero():
    rng = np.random.default_rng(3)
    protocol = replace(PAPER_SEG, scale=(40, 10), ratio_range=(1.0, 1.0), crop=(24, 24),
                       photometric=False, flip_prob=0.0)
    mean = (0.485, 0.456, 0.406)
    img, lab = seg_train_view(np.full((10, 40, 3), 200.0), np.zeros((10, 40), int), protocol,
                              rng, fill=tuple(255 * m for m in mean))
    padded = lab == IGNORE
    assert padded.any()
    np.testing.assert_allclose(img[padded] / 255 - np.array(mean), 0, atol=1e-6)


def test_losses_average_as_the_authors_do():
    logits = torch.randn(2, 3, 4, 4)
    label = torch.randint(0, 3, (2, 4, 4))
    label[0, :2] = IGNORE
    per_pixel = torch.nn.functional.cross_entropy(logits, label, ignore_index=IGNORE,
                                                  reduction="none")
    assert float(cross_entropy(logits, label)) == pytest.approx(float(per_pixel.sum() / 32))
    pred, gt = torch.rand(4, 5, 5) + 0.5, torch.rand(4, 5, 5) + 0.5
    pairs = (sig_loss(pred[:2], gt[:2]) + sig_loss(pred[2:], gt[2:])) / 2
    assert float(grouped_sig_loss(pred, gt, 2)) == pytest.approx(float(pairs))
    assert float(grouped_sig_loss(pred, gt, 4)) == pytest.approx(float(sig_loss(pred, gt)))


def test_photometric_distortion_and_hsv_round_trip():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (16, 16, 3)).astype(np.float32)
    # 8-bit HSV keeps hue in 2-degree steps: a round trip moves a channel by at most
    # 255 * 1/60 (half a step, at full saturation and value), as OpenCV's does
    np.testing.assert_allclose(hsv_to_rgb(rgb_to_hsv(image)), image, atol=255 / 60 + 0.5)
    out = photometric_distortion(image, rng)
    assert out.shape == image.shape and out.min() >= 0 and out.max() <= 255
    assert (out == np.round(out)).all()  # 8-bit levels, as mmseg's uint8 steps leave them


def test_depth_training_view_moves_depth_with_the_image():
    rng = np.random.default_rng(2)
    depth = rng.uniform(1, 5, (60, 80)).astype(np.float32)
    image = np.stack([depth * 50] * 3, -1)
    protocol = replace(PAPER_DEPTH["scannetpp"], crop=(40, 56), color_prob=0.0,
                       rotate_prob=1.0, rotate_degree=2.5)
    for _ in range(10):
        img, dep = depth_train_view(image, depth, protocol, rng)
        assert img.shape == (40, 56, 3) and dep.shape == (40, 56)
        valid = dep > 0
        # rotated with bilinear (image) and nearest (depth) sampling: mostly the same value
        close = np.abs(img[..., 0] / 50 - dep) < 0.6
        assert close[valid].mean() > 0.6
    assert rotate(np.ones((10, 10), np.float32), 0.0, True).sum() == 100


def test_eval_crops():
    assert eval_mask(np.ones((480, 640)), "eigen").sum() == 426 * 560
    garg = eval_mask(np.ones((352, 1216)), "garg")
    assert garg[:143].sum() == 0 and garg[200, 600]
    assert eval_mask(np.ones((5, 5)), None).all()


def test_depth_head_and_losses_are_the_toolboxs():
    head = DepthHead(8, 4, 0.001, 10.0).eval()
    feats, cls = torch.randn(2, 8, 3, 5), torch.randn(2, 4)
    with torch.no_grad():
        out = head(feats, cls, (30, 50))
    assert out.shape == (2, 30, 50) and out.min() >= 0.001 and out.max() <= 10.0
    assert head.conv.in_channels == 12  # features + CLS, no BatchNorm
    gt = torch.rand(2, 30, 50) * 5 + 0.5
    g = torch.log(out + 1e-3) - torch.log(gt + 1e-3)
    assert float(sig_loss(out, gt)) == pytest.approx(float(torch.sqrt(g.var()
                                                                      + 0.15 * g.mean() ** 2)))
    assert float(sig_loss(out, gt, warm_up=True)) == pytest.approx(float(torch.sqrt(
        0.15 * g.mean() ** 2)))
    assert gradient_loss(gt, gt) == 0
    assert gradient_loss(out, gt) > 0


def test_slide_inference_covers_every_pixel_once_averaged(tiny_pair):
    model = FiT3D(*tiny_pair, pad="center")

    class Constant(torch.nn.Module):
        def forward(self, outputs, size):
            return {v: torch.full((1, 3, *size), float(i)) for i, v in enumerate(VARIANTS)}

    image = torch.randn(1, 3, 40, 60)
    logits = slide_logits(model, Constant(), image, (28, 28), (19, 19), 3)
    for i, v in enumerate(VARIANTS):
        assert logits[v].shape == (1, 3, 40, 60)
        torch.testing.assert_close(logits[v], torch.full_like(logits[v], float(i)))


def test_backbone_outputs_split_the_branches(tiny_pair):
    model = FiT3D(*tiny_pair)
    x = torch.randn(2, 3, 28, 28)
    normed = backbone_outputs(model, x, norm=True)
    feats = model.forward_features(x)
    torch.testing.assert_close(normed["original"][0], feats.original)
    torch.testing.assert_close(normed["finetuned"][0], feats.finetuned)
    torch.testing.assert_close(normed["concat"][0], feats.features)
    raw = backbone_outputs(model, x, norm=False)  # the depth probe's un-normed tokens
    tokens = tiny_pair[0].forward_intermediates(x, indices=1, intermediates_only=True,
                                                return_prefix_tokens=True)[0]
    torch.testing.assert_close(raw["original"][0], tokens[0])
    torch.testing.assert_close(raw["concat"][1], tokens[1][:, 0])  # the original CLS token


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from scenes.synthetic import generate

    root = tmp_path_factory.mktemp("paper")
    generate(root, scenes=1, views=8, size=40, seed=5)
    return root


@pytest.mark.parametrize("task", ["seg", "depth"])
def test_paper_protocol_runs_end_to_end_on_a_tiny_setting(task, scenes, tiny_pair):
    data = open_dataset(f"synthetic:{scenes}")
    if task == "seg":
        protocol = replace(PAPER_SEG, iterations=4, batch_size=2, warmup_iters=2,
                           scale=(84, 28), crop=(28, 28), slide_stride=(19, 19))
    else:
        protocol = replace(PAPER_DEPTH["scannetpp"], iterations=4, batch_size=2,
                           warmup_iters=2, crop=(28, 42))
    model = FiT3D(*tiny_pair)
    metrics, timing = train_probe(model, data, task, protocol)
    assert set(metrics) == set(VARIANTS) and model.pad is None  # padding restored
    key = "mIoU" if task == "seg" else "RMSE"
    assert all(np.isfinite(m[key]) for m in metrics.values())
    assert timing["extract_s"] < 1.0  # the paper protocol caches nothing


def test_paper_protocol_cli_records_the_protocol(scenes, tiny_pair, tmp_path, capsys):
    FiT3D(*tiny_pair).save_pretrained(tmp_path / "model")
    out = tmp_path / "depth.json"
    code = probe_main(["--task", "depth", "--data", f"synthetic:{scenes}", "--model",
                       str(tmp_path / "model"), "--protocol", "paper", "--iterations", "2",
                       "--batch-size", "2", "--output", str(out)])
    assert code == 0
    payload = json.loads(out.read_text())
    assert payload["protocol"] == "paper"
    assert payload["protocol_settings"]["crop"] == [416, 544]
    assert payload["protocol_settings"]["iterations"] == 2  # the override, recorded
    assert {r.protocol for r in load_results(out)} == {"paper"}
    with pytest.raises(SystemExit) as exit_:
        probe_main(["--task", "depth", "--data", f"synthetic:{scenes}", "--model",
                    str(tmp_path / "model"), "--protocol", "paper", "--size", "28"])
    assert exit_.value.code == 2
    assert "--size and --no-cache belong to the quick protocol" in capsys.readouterr().err


def test_quick_protocol_depth_reads_unnormed_features(scenes, tiny_pair):
    data = open_dataset(f"synthetic:{scenes}")
    metrics, _ = train_probe(FiT3D(*tiny_pair), data, "depth",
                             quick_depth(iterations=3, batch_size=2, size=28))
    assert metrics["concat"]["RMSE"] > 0
