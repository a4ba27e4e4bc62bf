"""The PyTorch reference rasterizer against brute-force per-pixel compositing, and gsplat."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from training.lifting.rasterize import backend, gsplat_available
from training.lifting.sh import eval_sh
from training.lifting.torch_rasterizer import (
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
    assert all(t.grad is None for t in geo)  # features never move the geometry
