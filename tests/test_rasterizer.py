"""The PyTorch reference rasterizer against brute-force per-pixel compositing, and gsplat."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fit3d_hub.render.backends import backend, gsplat_available
from fit3d_hub.render.sh import eval_sh
from fit3d_hub.render.torch_rasterizer import (
    UNSUPPORTED,
    project,
    quat_to_rotmat,
    rasterization,
    rasterization_with_features,
)


def _scene(n: int = 40, seed: int = 0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=g, dtype=dtype) * 0.6
    means[:, 2] += 3.0
    quats = torch.randn(n, 4, generator=g, dtype=dtype)
    scales = torch.rand(n, 3, generator=g, dtype=dtype) * 0.15 + 0.02
    opac = torch.rand(n, generator=g, dtype=dtype) * 0.9 + 0.05
    colors = torch.rand(n, 5, generator=g, dtype=dtype)
    viewmats = torch.eye(4, dtype=dtype)[None]
    Ks = torch.tensor([[[40.0, 0, 16.0], [0, 40.0, 12.0], [0, 0, 1]]], dtype=dtype)
    return means, quats, scales, opac, colors, viewmats, Ks


def _brute_force(means, quats, scales, opac, colors, viewmat, K, width, height):
    """Composite each pixel independently: EWA splat, depth sort, gsplat's stopping rule."""
    rot = quat_to_rotmat(quats)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    splats = []
    for i in range(len(means)):
        p = viewmat[:3, :3] @ means[i] + viewmat[:3, 3]
        if p[2] <= 0.01:
            continue
        cov = viewmat[:3, :3] @ rot[i] @ torch.diag(scales[i] ** 2) @ rot[i].T @ viewmat[:3, :3].T
        # the Jacobian looks along a direction clamped to 1.3x the half field of view
        u = torch.clamp(p[0] / p[2], -(cx / fx + 0.15 * width / fx),
                        (width - cx) / fx + 0.15 * width / fx)
        v = torch.clamp(p[1] / p[2], -(cy / fy + 0.15 * height / fy),
                        (height - cy) / fy + 0.15 * height / fy)
        jac = torch.stack([torch.stack([fx / p[2], 0 * u, -fx * u / p[2]]),
                           torch.stack([0 * v, fy / p[2], -fy * v / p[2]])])
        cov2 = jac @ cov @ jac.T + 0.3 * torch.eye(2, dtype=means.dtype)
        mu = torch.stack([fx * p[0] / p[2] + cx, fy * p[1] / p[2] + cy])
        splats.append((float(p[2]), mu, torch.linalg.inv(cov2), float(opac[i]), colors[i]))
    splats.sort(key=lambda s: s[0])
    out = torch.zeros(height, width, colors.shape[1], dtype=means.dtype)
    for py in range(height):
        for px in range(width):
            t = 1.0
            for _, mu, conic, o, color in splats:
                d = torch.tensor([px + 0.5, py + 0.5], dtype=means.dtype) - mu
                alpha = min(0.999, o * math.exp(-0.5 * float(d @ conic @ d)))
                if alpha < 1 / 255:
                    continue
                if t * (1 - alpha) <= 1e-4:
                    break
                out[py, px] += alpha * t * color
                t *= 1 - alpha
    return out


def test_matches_brute_force_compositing():
    means, quats, scales, opac, colors, viewmats, Ks = _scene()
    render, alpha, info = rasterization(means, quats, scales, opac, colors, viewmats, Ks, 32, 24)
    expected = _brute_force(means, quats, scales, opac, colors, viewmats[0], Ks[0], 32, 24)
    assert render.shape == (1, 24, 32, 5) and alpha.shape == (1, 24, 32, 1)
    torch.testing.assert_close(render[0], expected, rtol=1e-6, atol=1e-7)
    assert (info["radii"] > 0).all(-1).sum() > 10  # most Gaussians were visible


def test_opaque_stack_stops_at_transmittance_floor():
    # 4 nearly opaque Gaussians (alpha 0.98) on the optical axis, centred on pixel (8, 8):
    # T is 0.02 after the first and 4e-4 after the second; the third would take it to 8e-6,
    # below 1e-4, so compositing stops there and the third and fourth never contribute.
    n = 4
    means = torch.tensor([[0.0, 0.0, 2.0 + i] for i in range(n)], dtype=torch.float64)
    quats = torch.tensor([[1.0, 0, 0, 0]] * n, dtype=torch.float64)
    scales = torch.full((n, 3), 0.5, dtype=torch.float64)
    opac = torch.full((n,), 0.98, dtype=torch.float64)
    colors = torch.eye(n, dtype=torch.float64)
    Ks = torch.tensor([[[20.0, 0, 8.5], [0, 20.0, 8.5], [0, 0, 1]]], dtype=torch.float64)
    render, alpha, _ = rasterization(means, quats, scales, opac, colors,
                                       torch.eye(4, dtype=torch.float64)[None], Ks, 16, 16)
    centre = render[0, 8, 8]
    assert centre[0] == pytest.approx(0.98, abs=1e-9)
    assert centre[1] == pytest.approx(0.98 * 0.02, abs=1e-9)
    assert centre[2] == 0 and centre[3] == 0
    assert alpha[0, 8, 8, 0] == pytest.approx(centre.sum().item())


def test_projection_of_a_known_point():
    means = torch.tensor([[0.5, -0.25, 2.0]], dtype=torch.float64)
    quats = torch.tensor([[1.0, 0, 0, 0]], dtype=torch.float64)
    scales = torch.full((1, 3), 0.1, dtype=torch.float64)
    Ks = torch.tensor([[[100.0, 0, 50.0], [0, 100.0, 40.0], [0, 0, 1]]], dtype=torch.float64)
    proj = project(means, quats, scales, torch.eye(4, dtype=torch.float64)[None], Ks, 100, 80)
    torch.testing.assert_close(proj["means2d"][0, 0], torch.tensor([75.0, 27.5],
                                                                    dtype=torch.float64))
    assert proj["depths"][0, 0] == 2.0
    # EWA: cov2d = s^2 J J^T + 0.3 I with J = [[f/z, 0, -f x/z^2], [0, f/z, -f y/z^2]]
    var_x = 0.01 * ((100 / 2) ** 2 + (100 * 0.5 / 4) ** 2) + 0.3
    var_y = 0.01 * ((100 / 2) ** 2 + (100 * 0.25 / 4) ** 2) + 0.3
    expected = [math.ceil(3.33 * math.sqrt(var_x)), math.ceil(3.33 * math.sqrt(var_y))]
    assert proj["radii"][0, 0].tolist() == expected == [18, 17]


def test_culls_behind_camera_and_off_screen():
    means = torch.tensor([[0.0, 0, -2.0], [50.0, 0, 2.0], [0.0, 0, 2.0]])
    quats = torch.tensor([[1.0, 0, 0, 0]] * 3)
    scales = torch.full((3, 3), 0.05)
    Ks = torch.tensor([[[50.0, 0, 16.0], [0, 50.0, 16.0], [0, 0, 1]]])
    proj = project(means, quats, scales, torch.eye(4)[None], Ks, 32, 32)
    assert (proj["radii"][0] > 0).all(-1).tolist() == [False, False, True]


def test_gradients_flow_to_all_inputs_and_means2d():
    means, quats, scales, opac, colors, viewmats, Ks = _scene(dtype=torch.float32)
    params = [t.requires_grad_() for t in (means, quats, scales, opac, colors)]
    render, _, info = rasterization(*params, viewmats, Ks, 32, 24)
    info["means2d"].retain_grad()
    render.square().sum().backward()
    for p in params:
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert info["means2d"].grad.abs().sum() > 0


def test_gradcheck_small_scene():
    means, quats, scales, opac, colors, viewmats, Ks = _scene(n=6, seed=3)
    means.requires_grad_()
    colors.requires_grad_()
    opac.requires_grad_()

    def f(m, c, o):
        return rasterization(m, quats, scales, o, c, viewmats, Ks, 12, 10)[0]

    assert torch.autograd.gradcheck(f, (means, colors, opac), eps=1e-6, atol=1e-5)


def test_sh_degree_zero_renders_base_colour_and_directional_terms_vary():
    coeffs = torch.zeros(2, 16, 3)
    coeffs[:, 0] = 1.0
    dirs = torch.tensor([[0.0, 0, 1], [1.0, 0, 0]])
    base = eval_sh(0, coeffs, dirs)
    torch.testing.assert_close(base, torch.full((2, 3), 0.28209479177387814))
    coeffs[:, 3] = 1.0  # the -C1 * x term
    varied = eval_sh(1, coeffs, dirs)
    assert torch.allclose(varied[0], base[0]) and varied[1, 0] < base[1, 0]


@pytest.mark.gpu
@pytest.mark.skipif(not gsplat_available(), reason="gsplat backend needs CUDA and gsplat")
def test_gsplat_matches_torch_backend():
    rng = np.random.default_rng(0)
    n = 2000
    dev = torch.device("cuda")
    means = torch.tensor(rng.normal(0, 0.7, (n, 3)), dtype=torch.float32, device=dev)
    means[:, 2] += 4.0
    quats = torch.tensor(rng.normal(size=(n, 4)), dtype=torch.float32, device=dev)
    scales = torch.tensor(rng.uniform(0.01, 0.08, (n, 3)), dtype=torch.float32, device=dev)
    opac = torch.tensor(rng.uniform(0.05, 0.95, n), dtype=torch.float32, device=dev)
    feats = torch.tensor(rng.normal(size=(n, 64)), dtype=torch.float32, device=dev)
    sh = torch.tensor(rng.normal(0, 0.3, (n, 16, 3)), dtype=torch.float32, device=dev)
    viewmats = torch.eye(4, device=dev)[None]
    Ks = torch.tensor([[[120.0, 0, 64.0], [0, 120.0, 48.0], [0, 0, 1]]], device=dev)
    for colors, deg in ((feats, None), (sh, 3)):
        inputs = [t.clone().requires_grad_() for t in (means, quats, scales, opac, colors)]
        ref_inputs = [t.clone().requires_grad_() for t in (means, quats, scales, opac, colors)]
        out, alpha, _ = backend("gsplat").rasterization(*inputs, viewmats, Ks, 128, 96,
                                                        sh_degree=deg, packed=False)
        ref, ref_alpha, _ = backend("torch").rasterization(*ref_inputs, viewmats, Ks, 128, 96,
                                                           sh_degree=deg)
        torch.testing.assert_close(out, ref, rtol=1e-3, atol=2e-3)
        torch.testing.assert_close(alpha, ref_alpha, rtol=1e-3, atol=2e-3)
        weight = torch.randn_like(out)
        (out * weight).sum().backward()
        (ref * weight).sum().backward()
        for a, b in zip(inputs, ref_inputs, strict=True):
            cos = torch.nn.functional.cosine_similarity(a.grad.flatten(), b.grad.flatten(), 0)
            assert cos > 0.99


def test_equal_depth_gaussians_composite_in_index_order():
    """Densification duplicates Gaussians at equal depth; gsplat's stable radix sort keeps
    them in index order, and so must the PyTorch backend."""
    dtype = torch.float64
    n = 24
    g = torch.Generator().manual_seed(0)
    means = torch.zeros(n, 3, dtype=dtype)
    means[:, :2] = (torch.rand(n, 2, generator=g, dtype=dtype) - 0.5) * 0.04  # overlapping
    means[:, 2] = 3.0  # all at the same depth
    quats = torch.tensor([[1.0, 0, 0, 0]], dtype=dtype).repeat(n, 1)
    scales = torch.full((n, 3), 0.2, dtype=dtype)
    opac = torch.rand(n, generator=g, dtype=dtype) * 0.1 + 0.05  # T stays above the stop
    colors = torch.eye(n, dtype=dtype)  # one channel per Gaussian: its blending weight
    viewmats = torch.eye(4, dtype=dtype)[None]
    Ks = torch.tensor([[[40.0, 0, 8.0], [0, 40.0, 8.0], [0, 0, 1]]], dtype=dtype)

    def expected(order):
        proj = project(means, quats, scales, viewmats, Ks, 16, 16)
        d = torch.tensor([8.5, 8.5], dtype=dtype) - proj["means2d"][0]
        a, b, c = proj["conics"][0].unbind(-1)
        alpha = opac * torch.exp(-(0.5 * (a * d[:, 0] ** 2 + c * d[:, 1] ** 2)
                                   + b * d[:, 0] * d[:, 1]))
        weights, t = torch.zeros(n, dtype=dtype), 1.0
        for i in order:  # front to back in the given order
            weights[i] = alpha[i] * t
            t = t * (1 - alpha[i])
        return weights

    render, _, _ = rasterization(means, quats, scales, opac, colors, viewmats, Ks, 16, 16)
    torch.testing.assert_close(render[0, 8, 8], expected(range(n)))
    # the same Gaussians listed in another order composite in that order
    perm = torch.randperm(n, generator=g)
    again, _, _ = rasterization(means[perm], quats, scales, opac[perm], colors[perm],
                                  viewmats, Ks, 16, 16)
    torch.testing.assert_close(again[0, 8, 8], expected(perm.tolist()))
    assert not torch.allclose(again[0, 8, 8], render[0, 8, 8])


def test_the_contract_is_gsplats_signature():
    import inspect

    ours = inspect.signature(rasterization).parameters
    gsplat = pytest.importorskip("gsplat")
    theirs = inspect.signature(gsplat.rasterization).parameters
    for name, param in theirs.items():
        if name in ours:
            assert ours[name].default == param.default or param.default is inspect._empty, name
        else:  # accepted through **options at gsplat's default, refused otherwise
            assert name in UNSUPPORTED or name == "rolling_shutter", name
    means, quats, scales, opac, colors, viewmats, Ks = _scene(n=4)
    with pytest.raises(ValueError, match="camera_model='fisheye': the PyTorch rasterizer"):
        rasterization(means, quats, scales, opac, colors, viewmats, Ks, 8, 8,
                      camera_model="fisheye")
    with pytest.raises(TypeError, match="unexpected keyword argument 'nope'"):
        rasterization(means, quats, scales, opac, colors, viewmats, Ks, 8, 8, nope=1)


def test_render_modes_and_backgrounds():
    means, quats, scales, opac, colors, viewmats, Ks = _scene(n=30)
    rgb, alpha, meta = rasterization(means, quats, scales, opac, colors[:, :3], viewmats, Ks,
                                     32, 24)
    both, _, _ = rasterization(means, quats, scales, opac, colors[:, :3], viewmats, Ks, 32, 24,
                               render_mode="RGB+D")
    torch.testing.assert_close(both[..., :3], rgb)
    depth_only, _, _ = rasterization(means, quats, scales, opac, colors[:, :3], viewmats, Ks,
                                     32, 24, render_mode="D")
    expected, _, _ = rasterization(means, quats, scales, opac, meta["depths"][0, :, None],
                                   viewmats, Ks, 32, 24)
    torch.testing.assert_close(depth_only, expected)
    ed, _, _ = rasterization(means, quats, scales, opac, colors[:, :3], viewmats, Ks, 32, 24,
                             render_mode="ED")
    torch.testing.assert_close(ed, expected / alpha.clamp_min(1e-10))
    bg = torch.tensor([[0.2, 0.4, 0.6]], dtype=rgb.dtype)
    on_bg, _, _ = rasterization(means, quats, scales, opac, colors[:, :3], viewmats, Ks, 32, 24,
                                backgrounds=bg)
    torch.testing.assert_close(on_bg, rgb + (1 - alpha) * bg)


def test_features_share_the_weights_but_not_the_gradient():
    means, quats, scales, opac, colors, viewmats, Ks = _scene(n=30, dtype=torch.float32)
    feats = torch.randn(30, 7, requires_grad=True)
    geo = [t.requires_grad_() for t in (means, quats, scales, opac)]
    _, alpha, rendered, _ = rasterization_with_features(
        *geo, colors[:, :3], feats, viewmats, Ks, 32, 24, sh_degree=None)
    plain, plain_alpha, _ = rasterization(*geo, feats, viewmats, Ks, 32, 24)
    torch.testing.assert_close(rendered, plain)  # same blending weights
    torch.testing.assert_close(alpha, plain_alpha)
    rendered.sum().backward()
    assert feats.grad.abs().sum() > 0
    # features never move the geometry: its gradient is absent or exactly zero
    assert all(t.grad is None or torch.count_nonzero(t.grad) == 0 for t in geo)


@pytest.fixture
def gsplat_reference():
    """gsplat's own PyTorch reference pipeline, its CUDA pieces ported to CPU (benchmarks/)."""
    import sys
    from pathlib import Path

    pytest.importorskip("gsplat")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from gsplat_cpu import gsplat_reference, gsplat_reference_on_cpu

    with gsplat_reference_on_cpu():
        yield gsplat_reference


def test_matches_gsplats_pytorch_reference(gsplat_reference):
    """Images, alphas and the gradients of every input agree with gsplat's reference (float64:
    the two differ only in summation order and the reference's log-space transmittance),
    with Gaussians duplicated at equal depth so their order is tested too."""
    means, quats, scales, opac, colors, viewmats, Ks = _scene(n=60, seed=5)
    dup = torch.arange(0, 60, 6)  # densification's clones: same depth, later indices
    means = torch.cat([means, means[dup]])
    quats = torch.cat([quats, quats[dup]])
    scales = torch.cat([scales, scales[dup] * 0.8])
    opac = torch.cat([opac, opac[dup].flip(0)])
    colors = torch.cat([colors, torch.rand(len(dup), 5, dtype=torch.float64)])
    viewmats = torch.cat([viewmats, viewmats])
    viewmats[1, 0, 3] = 0.2
    Ks = torch.cat([Ks, Ks])
    inputs = [t.clone().requires_grad_() for t in (means, quats, scales, opac, colors)]
    ref_inputs = [t.clone().requires_grad_() for t in (means, quats, scales, opac, colors)]
    out, alpha, _ = rasterization(*inputs, viewmats, Ks, 32, 24)
    ref, ref_alpha, _ = gsplat_reference(*ref_inputs, viewmats, Ks, 32, 24)
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(alpha, ref_alpha, rtol=1e-9, atol=1e-9)
    g = torch.Generator().manual_seed(0)
    up, up_alpha = torch.randn(out.shape, generator=g, dtype=out.dtype), \
        torch.randn(alpha.shape, generator=g, dtype=out.dtype)
    ((out * up).sum() + (alpha * up_alpha).sum()).backward()
    ((ref * up).sum() + (ref_alpha * up_alpha).sum()).backward()
    for name, a, b in zip(("means", "quats", "scales", "opacities", "colors"), inputs,
                          ref_inputs, strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-7, atol=1e-9, msg=name)


def test_long_lists_walked_in_segments_give_the_same_render(monkeypatch):
    """Segments of 16 list entries (carrying transmittance, leaving a block once all its
    pixels stopped) render and differentiate exactly like whole lists in one piece."""
    import fit3d_hub.render.torch_rasterizer as tr

    means, quats, scales, opac, colors, viewmats, Ks = _scene(n=120, seed=7)
    # and 40 wide, nearly opaque Gaussians behind them that cover the whole image: every
    # pixel stops after a few of them, so the later segments are never walked
    g = torch.Generator().manual_seed(8)
    wall = torch.zeros(40, 3, dtype=torch.float64)
    wall[:, 2] = torch.linspace(6.0, 9.0, 40, dtype=torch.float64)
    means = torch.cat([means, wall])
    quats = torch.cat([quats, torch.randn(40, 4, generator=g, dtype=torch.float64)])
    scales = torch.cat([scales, torch.full((40, 3), 8.0, dtype=torch.float64)])
    opac = torch.cat([opac, torch.full((40,), 0.98, dtype=torch.float64)])
    colors = torch.cat([colors, torch.rand(40, 5, generator=g, dtype=torch.float64)])

    def run():
        inputs = [t.clone().requires_grad_() for t in (means, quats, scales, opac, colors)]
        out, alpha, _ = rasterization(*inputs, viewmats, Ks, 32, 24)
        g = torch.Generator().manual_seed(0)
        ((out * torch.randn(out.shape, generator=g, dtype=out.dtype)).sum()
         + alpha.sum()).backward()
        return out, alpha, [t.grad for t in inputs]

    whole = run()
    import fit3d_hub.render.compositing as compositing

    # one tile, 16 list entries per segment
    monkeypatch.setattr(tr, "SLOTS", 16 * compositing.TILE * compositing.TILE)

    walked = []
    segment_init = compositing._Segment.__init__

    def counting(self, *args):
        walked.append(args[2])  # the segment's first list entry
        segment_init(self, *args)

    monkeypatch.setattr(compositing._Segment, "__init__", counting)
    pieces = run()
    assert max(walked) >= 16  # lists were walked in several segments ...
    torch.testing.assert_close(pieces[0], whole[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(pieces[1], whole[1], rtol=1e-12, atol=1e-12)
    for a, b in zip(pieces[2], whole[2], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    from fit3d_hub.render.compositing import intersect_tiles, reach

    proj = project(means, quats, scales, viewmats, Ks, 32, 24)
    lists = intersect_tiles(proj["means2d"], reach(proj["cov_diag"], opac[None], proj["radii"]),
                            proj["depths"], 32, 24, proj["conics"], opac[None])
    # ... and not to their ends: blocks whose pixels had all stopped were left early
    assert max(walked) + 16 < int(lists.counts.max())


def test_tile_falloff_min_is_the_minimum_over_the_tile():
    """The ellipse test that drops tiles from a Gaussian's list: its minimum of the
    quadratic form over a tile's pixel-centre rectangle is below every sampled point of the
    rectangle and reached by one of them (a fine grid), wherever the mean sits."""
    from fit3d_hub.render.compositing import TILE, tile_falloff_min

    g = torch.Generator().manual_seed(3)
    k = 200
    means2d = torch.rand(k, 2, generator=g, dtype=torch.float64) * 60 - 14  # in and around
    root = torch.randn(k, 2, 2, generator=g, dtype=torch.float64)
    cov = root @ root.transpose(1, 2) * 9 + 0.3 * torch.eye(2, dtype=torch.float64)
    inv = torch.linalg.inv(cov)
    conics = torch.stack([inv[:, 0, 0], inv[:, 0, 1], inv[:, 1, 1]], -1)
    tx = torch.randint(0, 4, (k,), generator=g)
    ty = torch.randint(0, 4, (k,), generator=g)
    got = tile_falloff_min(means2d, conics, tx, ty)
    s = torch.linspace(0, 1, 401, dtype=torch.float64)
    px = (tx * TILE + 0.5)[:, None, None] + (TILE - 1) * s[None, :, None]
    py = (ty * TILE + 0.5)[:, None, None] + (TILE - 1) * s[None, None, :]
    dx, dy = px - means2d[:, 0, None, None], py - means2d[:, 1, None, None]
    a, b, c = (conics[:, i, None, None] for i in range(3))
    sampled = (0.5 * a * dx * dx + b * dx * dy + 0.5 * c * dy * dy).flatten(1).amin(1)
    assert bool((got <= sampled + 1e-9).all())
    assert torch.allclose(got, sampled, rtol=1e-3, atol=1e-3)
    inside = ((means2d[:, 0] >= tx * TILE + 0.5) & (means2d[:, 0] <= tx * TILE + TILE - 0.5)
              & (means2d[:, 1] >= ty * TILE + 0.5) & (means2d[:, 1] <= ty * TILE + TILE - 0.5))
    assert inside.any() and (~inside).any() and bool((got[inside] == 0).all())


def test_bad_input_is_one_clear_error_and_empty_views_render_nothing():
    means, quats, scales, opac, colors, viewmats, Ks = _scene(n=10)
    bad = means.clone()
    bad[3, 0] = float("nan")
    with pytest.raises(ValueError, match="means holds 1 non-finite value"):
        rasterization(bad, quats, scales, opac, colors, viewmats, Ks, 16, 16)
    with pytest.raises(ValueError, match="scales must be positive"):
        rasterization(means, quats, -scales, opac, colors, viewmats, Ks, 16, 16)
    behind = means.clone()
    behind[:, 2] = -5.0  # every Gaussian behind the camera
    out, alpha, meta = rasterization(behind, quats, scales, opac, colors, viewmats, Ks, 16, 16)
    assert out.shape == (1, 16, 16, 5) and not out.any() and not alpha.any()
    assert meta["n_isects"] == 0
    with pytest.raises(MemoryError, match=r"needs ~.* GiB .* over the 0.00 GiB memory budget"):
        rasterization(means, quats, scales, opac, colors, viewmats, Ks, 16, 16,
                      memory_budget=1000)


def test_quat_to_rotmat_is_gsplats_own():
    """The PyTorch backend keeps its own quaternion conversion because the renderer ships in
    the wheel without gsplat; where gsplat is installed the two agree to the bit."""
    impl = pytest.importorskip("gsplat.cuda._torch_impl")
    quats = torch.randn(1000, 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(quat_to_rotmat(quats), impl._quat_to_rotmat(quats))


def test_orthographic_camera_is_gsplats_ortho():
    """gsplat's ``camera_model="ortho"``: a Gaussian lands at ``fx x + cx`` with a footprint
    of ``fx s`` (plus the 0.3 px^2 blur), whatever its depth (GMAE's camera)."""
    w = h = 24
    Ks = torch.tensor([[[12.0, 0, 12.0], [0, 12.0, 12.0], [0, 0, 1]]])
    quats = torch.tensor([[1.0, 0, 0, 0]])
    scales = torch.full((1, 3), 0.15)
    opac, colors = torch.tensor([0.9]), torch.ones(1, 3)
    renders = []
    for z in (5.0, 9.0):
        means = torch.tensor([[0.25, -0.5, z]])
        _, alpha, meta = rasterization(means, quats, scales, opac, colors, torch.eye(4)[None],
                                       Ks, w, h, camera_model="ortho")
        renders.append(alpha[0, ..., 0])
        torch.testing.assert_close(meta["means2d"][0, 0], torch.tensor([15.0, 6.0]))
    torch.testing.assert_close(renders[0], renders[1])
    var = (12 * 0.15) ** 2 + 0.3
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    expected = 0.9 * torch.exp(-0.5 * ((xs - 15) ** 2 + (ys - 6) ** 2) / var)
    expected = torch.where(expected >= 1 / 255, expected, torch.zeros_like(expected))
    torch.testing.assert_close(renders[0], expected, rtol=1e-4, atol=1e-4)
