"""The multiview-equivariance method end to end: sampler vs the eval's ground truth,
augmentation geometry, input size, the repo format with a refine conv, the CLI (resume,
bad input)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from helpers import authors_equivariance_ckpt, equivariance_by_hand, tiny_vit

from fit3d_hub import FiT3D, load_fit3d
from fit3d_hub.cards import render_card
from fit3d_hub.errors import RepoFormatError
from fit3d_hub.lora import add_lora, merge_lora
from fit3d_hub.refine import refine_conv
from fit3d_hub.sampling import sample_features
from fit3d_hub.schema import REFINE_WEIGHTS_NAME, read_config
from fit3d_hub.weights import read_state_dict
from scenes.correspondence import correspondences
from scenes.io import load_depth
from scenes.load import load_scene
from scenes.synthetic import generate
from scenes.types import SceneError
from training.equivariance.augment import shift_scale_rotate
from training.equivariance.cli import main
from training.equivariance.config import EquivarianceConfig
from training.equivariance.network import EquivarianceNet, network_input_size
from training.equivariance.pairs import (
    TrainingScene,
    load_training_scene,
    point_distances,
    sample_points,
)
from training.equivariance.run import check_backbone
from training.equivariance.trainer import draw_pair

SHORT = ["--lora-blocks", "2", "--target-size", "64", "--points", "500", "--lr", "1e-3"]


@pytest.fixture(scope="module")
def scenes_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("eq_scenes")
    generate(root, scenes=1, views=6, size=48, seed=3)
    return root


@pytest.fixture(scope="module")
def backbone_dir(tmp_path_factory) -> Path:
    vit = tiny_vit(0)
    path = tmp_path_factory.mktemp("eq_backbone") / "repo"
    FiT3D(vit, tiny_vit(0), mode="original").save_pretrained(path, include_base=True)
    return path


def test_sampler_positives_are_the_eval_ground_truth(scenes_dir):
    """Every sampled point of view A that the eval's ground truth sees in view B has its
    3D-nearest sampled point of B where the eval says it is."""
    scene = load_scene(next(scenes_dir.iterdir()))
    fa, fb = scene.frames[0], scene.frames[1]
    da, db = (load_depth(f.depth_path, f.depth_scale) for f in (fa, fb))
    rng = np.random.default_rng(0)
    pts_a = sample_points(fa.camera, da, da > 0, 300, rng)
    pts_b = sample_points(fb.camera, db, db > 0, int((db > 0).sum()), rng)  # every pixel
    gt = correspondences(fa.camera, da, fb.camera, db, stride=1)
    truth = {tuple(np.floor(uv).astype(int)): uvb for uv, uvb in zip(gt.uv_a, gt.uv_b,
                                                                    strict=True)}
    dist = point_distances(pts_a.xyz, pts_b.xyz, 1.0)
    nearest = dist.argmin(1).numpy()
    checked = 0
    for i, uv in enumerate(pts_a.uv):
        key = tuple(np.floor(uv).astype(int))
        if key not in truth:
            continue
        checked += 1
        assert np.abs(pts_b.uv[nearest[i]] - truth[key]).max() <= 1.0, (uv, truth[key])
    assert checked > 50


def test_sample_features_reads_token_centres():
    """Position ``p * k + p / 2`` reads token k exactly (the authors' alignment)."""
    p, grid = 14, torch.arange(5.0)
    fmap = grid.repeat(3, 1)[None].expand(1, 3, 5).clone()  # (1, 3, 5): value = column
    uv = np.array([[p * k + p / 2, p / 2] for k in range(5)] + [[p * 1.5 + p / 2, 7.0]])
    got = sample_features(fmap, uv, 5 * p, 3 * p, normalize=False)[:, 0]
    assert torch.allclose(got, torch.tensor([0, 1, 2, 3, 4, 1.5]))


def test_network_input_size_is_the_authors_rule():
    assert network_input_size(512, 512, 14) == (1120, 1120)  # their 512 px renders
    assert network_input_size(480, 640, 14) == (840, 1120)
    assert network_input_size(640, 480, 16) == (1280, 960)
    with pytest.raises(ValueError, match="target-size"):
        network_input_size(10, 1000, 14, target=8)


def test_shift_scale_rotate_moves_points_with_the_image():
    h, w = 40, 60
    image = torch.zeros(3, h, w)
    spots = np.array([[20.5, 15.5], [41.5, 28.5], [30.5, 20.5]])
    image[:, 15, 20] = 1.0  # the first spot is the only bright pixel
    rng = np.random.default_rng(5)
    moved_any = False
    for _ in range(20):
        out = shift_scale_rotate(image, spots[:1], rng, p=1.0)
        if not out.keep[0]:
            continue
        moved_any = True
        peak = torch.nonzero(out.image[0] == out.image[0].max())[0]
        # the brightest warped pixel is within a pixel of where the point went
        assert abs(peak[1].item() + 0.5 - out.uv[0, 0]) <= 1.0
        assert abs(peak[0].item() + 0.5 - out.uv[0, 1]) <= 1.0
    assert moved_any
    untouched = shift_scale_rotate(image, spots, np.random.default_rng(0), p=0.0)
    assert untouched.keep.all() and untouched.image is image


def _adapted_net(seed: int = 0) -> EquivarianceNet:
    vit = tiny_vit(seed)
    torch.manual_seed(seed)
    adapters = add_lora(vit, blocks=2)
    with torch.no_grad():
        for a in adapters:  # non-zero B, so the merge has something to fold
            a.b_q.weight.normal_(0, 0.1)
            a.b_v.weight.normal_(0, 0.1)
    return EquivarianceNet(vit, refine_conv(32)).eval()


def test_repo_with_refine_conv_loads_in_every_mode_and_in_timm(tmp_path):
    net = _adapted_net()
    x = torch.randn(1, 3, 28, 42)
    with torch.no_grad():
        expected = net(x)
    original = tiny_vit(7)
    model = FiT3D(original, merge_lora(net.vit), refine=net.refine)
    model.fit3d_block.method = "equivariance"
    model.save_pretrained(tmp_path / "repo", include_base=True)
    block = read_config(tmp_path / "repo" / "config.json").fit3d
    assert block.method == "equivariance" and block.refine.kernel_size == 3
    assert (tmp_path / "repo" / REFINE_WEIGHTS_NAME).is_file()

    with torch.no_grad():
        fine = load_fit3d(tmp_path / "repo", mode="finetuned")(x)
        both = load_fit3d(tmp_path / "repo")(x)
        orig = load_fit3d(tmp_path / "repo", mode="original")(x)
        plain = timm.create_model(f"local-dir:{tmp_path / 'repo'}", pretrained=True,
                                  num_classes=0, dynamic_img_size=True).eval()
        timm_tokens = plain.forward_features(x)[:, plain.num_prefix_tokens:]
    assert torch.allclose(fine, expected, atol=1e-5)
    assert torch.allclose(both, torch.cat([orig, expected], 1), atol=1e-5)
    with torch.no_grad():
        vit_only = net.vit.forward_features(x)[:, net.vit.num_prefix_tokens:]
    assert torch.allclose(timm_tokens, vit_only, atol=1e-5)  # timm: the ViT, no refine

    (tmp_path / "repo" / REFINE_WEIGHTS_NAME).unlink()
    with pytest.raises(RepoFormatError, match="refine.safetensors: missing"):
        load_fit3d(tmp_path / "repo", mode="finetuned")
    assert load_fit3d(tmp_path / "repo", mode="original").refine is None


def test_card_names_the_method_and_its_paper(tmp_path):
    net = _adapted_net()
    model = FiT3D(tiny_vit(7), merge_lora(net.vit), refine=net.refine)
    model.fit3d_block.method = "equivariance"
    model.save_pretrained(tmp_path / "repo", include_base=True)
    card = render_card(read_config(tmp_path / "repo" / "config.json"))
    assert "multiview-equivariance fine-tuning" in card and "ICLR 2025" in card
    assert "you2025multiview" in card and "yue2024improving" not in card
    assert "refine.safetensors" in card


def test_cli_trains_exports_and_resumes_to_the_same_weights(scenes_dir, backbone_dir,
                                                          tmp_path, capsys):
    common = ["--scenes", str(scenes_dir), "--backbone", str(backbone_dir), *SHORT]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main([*common, "--output", str(straight), "--steps", "4", "--save-every", "0"]) == 0
    assert main([*common, "--output", str(resumed), "--steps", "2", "--save-every", "2"]) == 0
    capsys.readouterr()
    assert main([*common, "--output", str(resumed), "--steps", "4", "--save-every", "2",
                 "--resume"]) == 0
    assert "resumed from" in capsys.readouterr().out  # it went on from step 2
    a = read_state_dict(straight / "model.safetensors")
    b = read_state_dict(resumed / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    ra = read_state_dict(straight / REFINE_WEIGHTS_NAME)
    rb = read_state_dict(resumed / REFINE_WEIGHTS_NAME)
    assert all(torch.equal(ra[k], rb[k]) for k in ra)
    base = read_state_dict(backbone_dir / "base.safetensors")
    qkv = "blocks.1.attn.qkv.weight"
    assert not torch.equal(a[qkv], base[qkv])  # the LoRA was merged into the last block
    summary = json.loads((straight / "training_summary.json").read_text())
    assert summary["steps"] == 4 and np.isfinite(summary["final_loss"])
    model = load_fit3d(straight)
    assert model.refine is not None and model.fit3d_block.method == "equivariance"


def test_cli_refuses_a_changed_setting_on_resume(scenes_dir, backbone_dir, tmp_path, capsys):
    common = ["--scenes", str(scenes_dir), "--backbone", str(backbone_dir), *SHORT,
              "--output", str(tmp_path / "run"), "--save-every", "1"]
    assert main([*common, "--steps", "1"]) == 0
    assert main([*common, "--steps", "2", "--resume", "--temperature", "0.02"]) == 2
    assert "temperature" in capsys.readouterr().err


def test_scene_without_depth_is_one_line(scenes_dir, backbone_dir, tmp_path, capsys):
    scene = next(scenes_dir.iterdir())
    copy = tmp_path / scene.name
    shutil.copytree(scene, copy)
    meta = json.loads((copy / "transforms.json").read_text())
    for frame in meta["frames"]:
        frame.pop("depth_file_path", None)
    (copy / "transforms.json").write_text(json.dumps(meta))
    code = main(["--scenes", str(copy), "--backbone", str(backbone_dir),
                 "--output", str(tmp_path / "out"), *SHORT])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1  # bad data: exit 1, before any work
    assert str(copy) in err and "no depth for" in err


def test_unsupported_backbone_and_lora_blocks_are_one_line():
    vit = tiny_vit(0)
    with pytest.raises(ValueError, match="--lora-blocks 5: this backbone has 2 blocks"):
        check_backbone(vit, "tiny", EquivarianceConfig(lora_blocks=5))
    vit.blocks[0].attn.qkv = torch.nn.Identity()
    with pytest.raises(ValueError, match="--backbone tiny: .*fused attn.qkv"):
        check_backbone(vit, "tiny", EquivarianceConfig())


def test_pairs_without_overlap_name_the_scene_and_views(scenes_dir):
    real = load_training_scene(next(scenes_dir.iterdir()))
    far = [d.copy() for d in real.depths]
    far[1] = far[1] * 50.0  # view 1 now sees a surface far behind view 0's
    scene = TrainingScene("apart", real.images[:2], [far[0], far[1]], real.masks[:2],
                          real.cameras[:2], real.frames[:2], real.extent, [(0, 1)])
    with pytest.raises(SceneError, match="apart, views .* share no 3D point|share no 3D "
                       "point .*scene apart"):
        draw_pair([scene], EquivarianceConfig(points=200, augment=False),
                  np.random.default_rng(0), mean=(0.5,) * 3, std=(0.5,) * 3, patch=14)


def test_nan_loss_stops_with_one_line(scenes_dir, backbone_dir, tmp_path, capsys,
                                      monkeypatch):
    import training.equivariance.trainer as trainer

    def nan_loss(*args, **kwargs):
        return torch.tensor(float("nan"), requires_grad=True)

    monkeypatch.setattr(trainer, "smooth_ap_loss", nan_loss)
    code = main(["--scenes", str(scenes_dir), "--backbone", str(backbone_dir), *SHORT,
                 "--output", str(tmp_path / "out"), "--steps", "3"])
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar
    assert code == 1 and err.startswith("python -m training.equivariance: error: loss became "
                                        "nan at step 1 (scene ")
    assert not (tmp_path / "out" / "config.json").exists()


def test_authors_release_converts_to_the_adapted_model(tmp_path, tiny_spec, capsys):
    from fit3d_hub.cli import main as cli

    original = tiny_vit(0)
    source = authors_equivariance_ckpt(tmp_path / "tiny.ckpt", original)
    base = tmp_path / "base.safetensors"
    from fit3d_hub.weights import save_state_dict
    save_state_dict(original.state_dict(), base)
    assert cli(["convert", str(source), "--method", "equivariance", "--backbone", "tiny_dinov2",
                "--base", str(base), "--output", str(tmp_path / "repo")]) == 0
    x = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        expected = equivariance_by_hand(tiny_vit(0), source)(x)
        got = load_fit3d(tmp_path / "repo", mode="finetuned")(x)
    assert torch.allclose(got, expected, atol=1e-5)
    assert read_config(tmp_path / "repo" / "config.json").fit3d.method == "equivariance"


def test_authors_release_with_code_or_wrong_layout_is_refused(tmp_path, tiny_spec, capsys):
    from fit3d_hub.cli import main as cli

    class Evil:
        def __reduce__(self):
            return (print, ("ran",))

    torch.save({"state_dict": Evil()}, tmp_path / "evil.ckpt")
    torch.save({"state_dict": {"model.x": torch.zeros(1)}}, tmp_path / "other.ckpt")
    for name, expected in (("evil.ckpt", "refused to unpickle"),
                           ("other.ckpt", "not a 3DCorrEnhance checkpoint")):
        code = cli(["convert", str(tmp_path / name), "--method", "equivariance",
                    "--backbone", "tiny_dinov2", "--output", str(tmp_path / "out")])
        captured = capsys.readouterr()
        assert code == 1 and expected in captured.err and "ran" not in captured.out
        assert len(captured.err.strip().splitlines()) == 1


def test_authors_release_converts_on_hub_base_weights(tmp_path, tiny_spec, tiny_pair,
                                                      hub_cache):
    from fit3d_hub.cli import main as cli

    original, _ = tiny_pair
    source = authors_equivariance_ckpt(tmp_path / "tiny.ckpt", original, seed=1)
    assert cli(["convert", str(source), "--method", "equivariance", "--backbone", "tiny_dinov2",
                "--cache-dir", str(hub_cache), "--output", str(tmp_path / "repo")]) == 0
    assert not (tmp_path / "repo" / "base.safetensors").exists()  # points at the timm repo
    x = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        orig = load_fit3d(tmp_path / "repo", mode="original", cache_dir=hub_cache)(x)
        both = load_fit3d(tmp_path / "repo", cache_dir=hub_cache)(x)
        reference = original.forward_features(x)[:, 1:].reshape(1, 2, 2, 32).permute(0, 3, 1, 2)
    assert torch.allclose(orig, reference, atol=1e-5)
    assert both.shape[1] == 64 and not torch.allclose(both[:, 32:], orig, atol=1e-3)
