"""Stage 1 on CPU: gradient separation, densification, teacher cache, and a real small lift."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from fit3d_hub import FiT3D
from fit3d_hub.backbone import create_vit
from fit3d_hub.render.strategy import OpacityResetStrategy, reset_is_due
from fit3d_hub.weights import save_state_dict
from scenes.load import load_scene
from scenes.synthetic import generate
from scenes.views import load_views
from training.fit3d.lift.config import SHORT_RUN_RATES
from training.fit3d.lift.gaussians import GEOMETRY, FeatureGaussians, knn_sq_distances
from training.fit3d.lift.losses import ssim
from training.fit3d.lift.record import (
    META_KEY,
    LiftedMeta,
    LiftedSceneError,
    is_finished,
    load_lifted,
    read_meta,
    save_lifted,
)
from training.fit3d.lift.teacher import compute_teacher_features, upsample_teacher
from training.fit3d.lift.trainer import (
    LiftConfig,
    SceneViews,
    evaluate,
    lift_scene,
    render_views,
    step_losses,
)

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    path = generate(tmp_path_factory.mktemp("lift"), scenes=1, views=16, size=48, seed=0)[0]
    return load_scene(path)


@pytest.fixture(scope="module")
def teacher():
    """A tiny patch-8 ViT without position embeddings: its features depend on what a patch
    shows, not where it sits in the frame, so a consistent 3D field can explain them (a
    random position embedding would make every view's features its own)."""
    torch.manual_seed(0)
    vit = create_vit("vit_small_patch8_224", {"embed_dim": 32, "depth": 2, "num_heads": 2,
                                              "img_size": 48})
    with torch.no_grad():
        vit.pos_embed.zero_()
    return FiT3D(vit, None, mode="original")


@pytest.fixture(scope="module")
def views(scene, teacher):
    images = load_views(scene)
    return SceneViews.from_images(images, compute_teacher_features(teacher, images.images), CPU)


@pytest.fixture(scope="module")
def lifted(scene, views):
    config = LiftConfig(iterations=200, max_points=1500, holdout_every=4, lr=SHORT_RUN_RATES,
                        refine_start_iter=50,
                        refine_every=25, refine_stop_iter=150, reset_every=100,
                        sh_degree_interval=50)
    initial = FeatureGaussians.initialise(scene, feature_dim=64, teacher_dim=32, sh_degree=3,
                                          max_points=1500)
    before = evaluate(initial, views, "torch", config, range(len(scene.frames)))
    result = lift_scene(scene, views, config, backend="torch", device=CPU)
    return before, result, config


def test_feature_loss_puts_exactly_zero_gradient_on_geometry(scene, views):
    g = FeatureGaussians.initialise(scene, feature_dim=16, teacher_dim=32, sh_degree=1,
                                    max_points=500)
    assert torch.count_nonzero(g.splats["features"]) == 0  # the authors' zero init
    with torch.no_grad():  # anisotropic, rotated Gaussians: every geometry input matters
        g.splats["quats"].add_(0.3 * torch.randn_like(g.splats["quats"]))
        g.splats["scales"].add_(0.3 * torch.randn_like(g.splats["scales"]))
        # as after some training: non-zero features, so the decoder gets a gradient too
        g.splats["features"].normal_()
    out = render_views(g, views, 0, "torch", sh_degree=1)
    l_rgb, l_feat = step_losses(out, views, 0, LiftConfig())
    l_feat.backward(retain_graph=True)
    for name in GEOMETRY:
        grad = g.splats[name].grad
        assert grad is None or torch.count_nonzero(grad) == 0, name
    assert torch.count_nonzero(g.splats["features"].grad) > 0
    assert torch.count_nonzero(g.decoder.weight.grad) > 0
    g.zero_grad(set_to_none=True)
    l_rgb.backward()
    for name in GEOMETRY:
        assert torch.count_nonzero(g.splats[name].grad) > 0, name
    features = g.splats["features"].grad  # exactly zero (the compositing returns zeros)
    assert features is None or torch.count_nonzero(features) == 0
    assert g.decoder.weight.grad is None


def test_teacher_cache_runs_the_backbone_once_per_view(scene, teacher):
    calls = []
    # a backbone run embeds its patches once, whichever timm path reads its blocks
    hook = teacher.original.patch_embed.register_forward_hook(
        lambda module, args, out: calls.append(args[0].shape[0]))
    try:
        _check_teacher_cache(scene, teacher, calls)
    finally:
        hook.remove()


def _check_teacher_cache(scene, teacher, calls: list[int]) -> None:
    images = load_views(scene)
    feats = compute_teacher_features(teacher, images.images,
                                     batch_size=3)
    assert sum(calls) == len(scene.frames)  # every view exactly once
    # 48x36 views enter the patch-8 teacher as 48x32 (sides rounded to patch multiples)
    assert feats.dtype == torch.float16 and feats.shape == (16, 32, 4, 6)
    views = SceneViews.from_images(images, feats, CPU)
    calls.clear()
    lift_scene(scene, views, LiftConfig(iterations=5, max_points=300), backend="torch",
               device=CPU)
    assert calls == []  # training reads the cache, never the backbone


def test_teacher_target_is_the_bilinear_upsampling(views):
    up = upsample_teacher(views.teacher[:1], views.height, views.width)
    assert up.shape == (1, 32, 36, 48) and up.dtype == torch.float32
    expected = torch.nn.functional.interpolate(views.teacher[:1].float(), size=(36, 48),
                                               mode="bilinear", align_corners=False)
    torch.testing.assert_close(up, expected)


def test_lifting_improves_rgb_and_features(lifted):
    before, result, _ = lifted
    after = result.metrics
    assert after["psnr"] > before["psnr"] + 3.0
    assert after["feature_l1"] < 0.8 * before["feature_l1"]
    assert result.metrics["gaussians"] > 1500  # densification grew the model
    assert result.metrics["opacity_resets"] >= 1


def test_held_out_view_features_beat_a_constant_mean(lifted, scene, views):
    _, result, config = lifted
    train = [i for i in range(len(scene.frames)) if i % config.holdout_every != 0]
    mean_feature = views.teacher[train].float().mean(dim=(0, 2, 3))
    for held_out in (0, 4):
        with torch.no_grad():
            out = render_views(result.gaussians, views, held_out, "torch", config.sh_degree)
        target = upsample_teacher(views.teacher[held_out:held_out + 1], views.height,
                                  views.width)
        rendered = (out["decoded"] - target).abs().mean()
        constant = (mean_feature.view(1, -1, 1, 1) - target).abs().mean()
        assert rendered < 0.93 * constant, (held_out, float(rendered), float(constant))


def test_lifted_file_round_trip(lifted, tmp_path):
    _, result, _ = lifted
    meta = LiftedMeta("s", 16, (64, 48), backbone="tiny", feature_dim=64,
                      extra={"from_the_future": {"k": 1}})
    path = save_lifted(tmp_path / "s" / "feature_gaussians.safetensors", result.gaussians, meta)
    assert is_finished(path)
    loaded, read = load_lifted(path)
    assert read == meta and read.format_version == 1  # unknown keys survive the round trip
    for key, value in result.gaussians.state_tensors().items():
        torch.testing.assert_close(loaded.state_tensors()[key], value)
    path.write_bytes(path.read_bytes()[:1000])
    assert not is_finished(path)


def test_a_lifted_file_written_before_the_typed_record_still_loads(lifted, tmp_path):
    """The metadata as the untyped writer put it ({"format_version": 1, **dict}), with and
    without the fields older files lack; a newer format or a bad field is one line."""
    _, result, _ = lifted
    old = {"scene": "scene_000", "scene_path": "/data/scene_000", "backbone": "tiny",
           "feature_dim": 64, "teacher_dim": 32, "patch_size": 8, "iterations": 120,
           "backend": "torch", "camera_convention": "opencv world-to-camera (gsplat viewmats)",
           "image_size": [64, 48], "downscale": 2, "sh_degree": 3, "views": 16,
           "training_views": [1, 2, 3], "splits": ["train"] * 16, "metrics": {"psnr": 20.5},
           "config": {"iterations": 120}, "versions": {"torch": "2.4.0"}}
    path = tmp_path / "old" / "feature_gaussians.safetensors"

    def write(meta: dict) -> None:
        save_state_dict(result.gaussians.state_tensors(), path,
                        metadata={META_KEY: json.dumps({"format_version": 1, **meta})})

    write(old)
    meta = read_meta(path)
    assert (meta.scene, meta.views, meta.image_size, meta.downscale) == \
        ("scene_000", 16, (64, 48), 2.0)
    assert meta.training_views == [1, 2, 3] and meta.metrics == {"psnr": 20.5}
    # files older than the lifter field were all made by Stage 1
    assert meta.lifter == "stage1" and meta.lifter_model is None
    assert meta.to_json() == {"format_version": 1, **old, "downscale": 2.0,
                              "lifter": "stage1", "lifter_model": None}
    oldest = {k: old[k] for k in ("scene", "views", "image_size")}
    write(oldest)
    meta = read_meta(path)
    assert meta.scene_path is None and meta.training_views is None and meta.downscale == 1.0
    assert meta.all_splits == ["train"] * 16
    for bad, message in (({**old, "format_version": 2}, "lifted-file format 2"),
                         ({**old, "image_size": [64]}, "'image_size' must be [width, height]"),
                         ({**old, "views": "16"}, "'views' must be a int")):
        write(bad)
        with pytest.raises(LiftedSceneError, match=re.escape(message)):
            read_meta(path)


def test_opacity_reset_runs_on_schedule():
    assert reset_is_due(3000, 3000, 15_000) and not reset_is_due(0, 3000, 15_000)
    assert not reset_is_due(15_000, 3000, 15_000) and not reset_is_due(2999, 3000, 15_000)
    n = 10
    params = torch.nn.ParameterDict({
        "means": torch.nn.Parameter(torch.randn(n, 3)),
        "scales": torch.nn.Parameter(torch.full((n, 3), -3.0)),
        "quats": torch.nn.Parameter(torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1)),
        "opacities": torch.nn.Parameter(torch.full((n,), 3.0)),  # sigmoid ~ 0.95
    })
    opts = {k: torch.optim.Adam([{"params": p, "lr": 1e-3, "name": k}])
            for k, p in params.items()}
    strategy = OpacityResetStrategy(refine_start_iter=1000, reset_every=200, refine_every=100)
    state = strategy.initialize_state()
    means2d = torch.zeros(1, n, 2, requires_grad=True)
    means2d.sum().backward()
    info = {"width": 32, "height": 32, "n_cameras": 1, "radii": torch.ones(1, n, 2),
            "gaussian_ids": None, "means2d": means2d}
    strategy.step_post_backward(params, opts, state, 199, info)
    assert torch.sigmoid(params["opacities"]).min() > 0.9
    strategy.step_post_backward(params, opts, state, 200, info)
    assert torch.sigmoid(params["opacities"]).max() <= strategy.prune_opa * 2 + 1e-6
    assert strategy.resets_done == 1


def test_a_gsplat_that_resets_itself_is_not_reset_twice(monkeypatch):
    """Emulate gsplat's fixed release (it resets at every reset_every step): the repair must
    see that and leave the reset to gsplat, so it happens once per schedule step."""
    import gsplat.strategy.default as default
    from gsplat.strategy.ops import reset_opa

    import fit3d_hub.render.strategy as strategy_module

    assert strategy_module.gsplat_resets_opacity() is False  # gsplat 1.5.3, as pinned
    calls = []
    fixed_parent = default.DefaultStrategy.step_post_backward

    def fixed(self, params, optimizers, state, step, info, packed=False):
        fixed_parent(self, params, optimizers, state, step, info, packed=packed)
        if step < self.refine_stop_iter and step % self.reset_every == 0 and step > 0:
            calls.append(step)
            reset_opa(params=params, optimizers=optimizers, state=state,
                      value=self.prune_opa * 2.0)

    monkeypatch.setattr(default.DefaultStrategy, "step_post_backward", fixed)
    strategy_module.gsplat_resets_opacity.cache_clear()
    monkeypatch.setattr(strategy_module, "reset_opa", lambda **kw: calls.append("repair"))
    try:
        assert strategy_module.gsplat_resets_opacity() is True
        n = 4
        params = torch.nn.ParameterDict({
            "means": torch.nn.Parameter(torch.randn(n, 3)),
            "scales": torch.nn.Parameter(torch.full((n, 3), -3.0)),
            "quats": torch.nn.Parameter(torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1)),
            "opacities": torch.nn.Parameter(torch.full((n,), 3.0)),
        })
        opts = {k: torch.optim.Adam([p], lr=1e-3) for k, p in params.items()}
        strategy = OpacityResetStrategy(refine_start_iter=1000, reset_every=200)
        state = strategy.initialize_state()
        means2d = torch.zeros(1, n, 2, requires_grad=True)
        means2d.sum().backward()
        info = {"width": 32, "height": 32, "n_cameras": 1, "radii": torch.ones(1, n, 2),
                "gaussian_ids": None, "means2d": means2d}
        calls.clear()
        strategy.step_post_backward(params, opts, state, 200, info)
        assert calls == [200] and strategy.resets_done == 1  # gsplat's reset, no repair
    finally:
        strategy_module.gsplat_resets_opacity.cache_clear()


def test_grid_nearest_neighbours_equal_all_pairs():
    """Above BRUTE_FORCE_POINTS the initial scales come from a grid search; on a plane, a
    tight cluster, duplicates and far outliers it finds what all pairwise distances give."""
    gen = torch.Generator().manual_seed(0)
    plane = torch.cat([torch.rand(1500, 2, generator=gen) * 4, torch.zeros(1500, 1)], 1)
    points = torch.cat([plane, torch.randn(400, 3, generator=gen) * 0.01 + 2,
                        plane[:100], torch.rand(60, 3, generator=gen) * 50])
    grid = knn_sq_distances(points, 3, budget=20_000)  # a small budget: many chunks
    d2 = (points[:, None].double() - points[None].double()).square().sum(-1)
    d2.fill_diagonal_(float("inf"))
    torch.testing.assert_close(grid.double(), d2.topk(3, largest=False).values,
                               rtol=1e-5, atol=1e-9)
    assert (grid[1500 + 400:1500 + 500, 0] == 0).all()  # each duplicate's nearest: its twin


def test_ssim_of_identical_images_is_one_and_drops_with_noise():
    x = torch.rand(1, 3, 24, 24)
    assert torch.allclose(ssim(x, x), torch.ones_like(x), atol=1e-5)
    assert ssim(x, (x + 0.3 * torch.randn_like(x)).clamp(0, 1)).mean() < 0.8


def test_ssim_is_3dgs_window_summed_pixel_by_pixel():
    """At corners, edges and inside: the 11x11 Gaussian (sigma 1.5) weighted moments with
    zero padding, summed in float64 by hand, as 3DGS's 2D-window convolution defines them."""
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(1, 2, 20, 17, generator=gen), torch.rand(1, 2, 20, 17, generator=gen)
    got = ssim(x, y)
    g = torch.exp(-((torch.arange(11.0, dtype=torch.float64) - 5) ** 2) / (2 * 1.5**2))
    window = torch.outer(g / g.sum(), g / g.sum())
    pad = [torch.nn.functional.pad(t.double(), (5, 5, 5, 5)) for t in (x, y)]
    for c, i, j in ((0, 0, 0), (1, 19, 16), (0, 3, 16), (1, 10, 8), (0, 19, 0)):
        a, b = (t[0, c, i:i + 11, j:j + 11] for t in pad)
        mx, my = (window * a).sum(), (window * b).sum()
        sxx = (window * a * a).sum() - mx**2
        syy = (window * b * b).sum() - my**2
        sxy = (window * a * b).sum() - mx * my
        c1, c2 = 0.01**2, 0.03**2
        want = (2 * mx * my + c1) * (2 * sxy + c2) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
        assert abs(float(got[0, c, i, j]) - float(want)) < 1e-5, (c, i, j)


def test_random_init_without_points_fills_the_frusta(scene):
    bare = type(scene)(scene.name, scene.root, scene.frames, None, None)
    g = FeatureGaussians.initialise(bare, feature_dim=8, teacher_dim=4, sh_degree=0,
                                    random_points=400)
    means = g.splats["means"].detach().numpy()
    assert g.num_gaussians == 400
    cam = scene.frames[0].camera
    uv, z = cam.project(means.astype(np.float64))
    inside = (z > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < cam.width) & (uv[:, 1] >= 0) \
        & (uv[:, 1] < cam.height)
    assert inside.mean() > 0.05  # a share of the points sits in each camera's frustum
