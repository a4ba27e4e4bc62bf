"""Pure-PyTorch Gaussian rasterizer: the CPU reference, differentiable by autograd.

It follows gsplat's conventions so the two backends are interchangeable: OpenCV
world-to-camera ``viewmats``, pixel centres at ``+0.5``, a 2D covariance blur ``eps2d``
(0.3), screen radii of 3.33 sigma per axis, alpha clamped at 0.999, contributions below
1/255 skipped, front-to-back compositing by camera-space depth that stops before the
transmittance would fall to 1e-4. Instead of tiles it enumerates (pixel, Gaussian) pairs
inside each Gaussian's screen box and composites each pixel's depth-sorted run with a
segmented cumulative sum of log-transmittance (in float64).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from training.lifting.sh import eval_sh

ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.999
T_MIN = 1e-4
RADIUS_SIGMAS = 3.33


def quat_to_rotmat(quats: torch.Tensor) -> torch.Tensor:
    """(N, 4) quaternions (w, x, y, z), any norm -> (N, 3, 3) rotation matrices."""
    w, x, y, z = F.normalize(quats, dim=-1).unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], -1).reshape(-1, 3, 3)


def project(means: torch.Tensor, quats: torch.Tensor, scales: torch.Tensor,
            viewmats: torch.Tensor, Ks: torch.Tensor, width: int, height: int,
            eps2d: float = 0.3, near_plane: float = 0.01, far_plane: float = 1e10,
            radius_clip: float = 0.0) -> dict[str, torch.Tensor]:
    """EWA projection of N Gaussians into C cameras.

    Returns ``means2d`` (C, N, 2), ``conics`` (C, N, 3) (upper triangle of the inverse 2D
    covariance), ``depths`` (C, N) and ``radii`` (C, N, 2) int32, zero for culled Gaussians.
    """
    rot = quat_to_rotmat(quats)
    m = rot * scales[:, None, :]
    cov3d = m @ m.transpose(1, 2)  # R S S^T R^T, (N, 3, 3)
    r_wc, t_wc = viewmats[:, :3, :3], viewmats[:, :3, 3]
    means_c = torch.einsum("cij,nj->cni", r_wc, means) + t_wc[:, None]
    cov_c = torch.einsum("cij,njk,clk->cnil", r_wc, cov3d, r_wc)
    tx, ty, tz = means_c.unbind(-1)
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    # Clamp the Jacobian's view direction to a bit beyond the frustum (as 3DGS and gsplat do)
    # so Gaussians far outside the image do not produce huge screen-space footprints.
    tan_x, tan_y = 0.5 * width / fx, 0.5 * height / fy
    safe_z = torch.where(tz.abs() < 1e-9, torch.full_like(tz, 1e-9), tz)
    jx = safe_z * torch.clamp(tx / safe_z, min=-(cx / fx + 0.3 * tan_x),
                              max=(width - cx) / fx + 0.3 * tan_x)
    jy = safe_z * torch.clamp(ty / safe_z, min=-(cy / fy + 0.3 * tan_y),
                              max=(height - cy) / fy + 0.3 * tan_y)
    zeros = torch.zeros_like(tz)
    jac = torch.stack([fx / safe_z, zeros, -fx * jx / safe_z**2,
                       zeros, fy / safe_z, -fy * jy / safe_z**2], -1).reshape(*tz.shape, 2, 3)
    cov2d = jac @ cov_c @ jac.transpose(-1, -2)
    a = cov2d[..., 0, 0] + eps2d
    b = 0.5 * (cov2d[..., 0, 1] + cov2d[..., 1, 0])
    c = cov2d[..., 1, 1] + eps2d
    det_blur = cov2d[..., 0, 0] * cov2d[..., 1, 1] - b * b
    det = (a * c - b * b).clamp_min(1e-10)
    # gsplat's antialiased mode scales opacity by this (the blur's energy compensation)
    compensations = torch.sqrt(torch.clamp_min(det_blur / det, 0.0))
    conics = torch.stack([c / det, -b / det, a / det], -1)
    means2d = torch.stack([fx * tx / safe_z + cx, fy * ty / safe_z + cy], -1)
    with torch.no_grad():
        radii = torch.stack([torch.ceil(RADIUS_SIGMAS * a.sqrt()),
                             torch.ceil(RADIUS_SIGMAS * c.sqrt())], -1)
        valid = (det > 0) & (tz > near_plane) & (tz < far_plane) \
            & (radii.amax(-1) > radius_clip)
        inside = ((means2d[..., 0] + radii[..., 0] > 0) & (means2d[..., 0] - radii[..., 0] < width)
                  & (means2d[..., 1] + radii[..., 1] > 0)
                  & (means2d[..., 1] - radii[..., 1] < height))
        radii = torch.where((valid & inside)[..., None], radii, torch.zeros_like(radii)).int()
    return {"means2d": means2d, "conics": conics, "depths": tz, "radii": radii,
            "compensations": compensations}


def _pairs(means2d: torch.Tensor, radii: torch.Tensor, depths: torch.Tensor, width: int,
           height: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(camera, Gaussian, x, y) for every pixel inside each visible Gaussian's screen box,
    sorted by pixel and then by depth."""
    cam, gid = torch.nonzero(radii[..., 0] > 0, as_tuple=True)
    centre = means2d.detach()[cam, gid]
    r = radii[cam, gid].to(centre.dtype)
    x0 = torch.floor(centre[:, 0] - r[:, 0]).clamp(0, width - 1).long()
    x1 = torch.floor(centre[:, 0] + r[:, 0]).clamp(0, width - 1).long()
    y0 = torch.floor(centre[:, 1] - r[:, 1]).clamp(0, height - 1).long()
    y1 = torch.floor(centre[:, 1] + r[:, 1]).clamp(0, height - 1).long()
    nx, ny = x1 - x0 + 1, y1 - y0 + 1
    counts = nx * ny
    owner = torch.repeat_interleave(torch.arange(len(cam), device=cam.device), counts)
    start = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    local = torch.arange(len(owner), device=cam.device) - start
    px = x0[owner] + local % nx[owner]
    py = y0[owner] + local // nx[owner]
    pcam, pgid = cam[owner], gid[owner]
    pixel = (pcam * height + py) * width + px
    # Rank by depth within each camera, then sort pairs by (pixel, depth rank). The sort is
    # stable, so equal depths (Gaussians duplicated by densification) composite in index
    # order, as gsplat's stable radix sort of its index-ordered intersections does.
    n = depths.shape[1]
    order = torch.argsort(depths.detach(), dim=1, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(n, device=order.device).expand_as(order))
    key = pixel * n + rank[pcam, pgid]
    perm = torch.argsort(key)
    return pcam[perm], pgid[perm], pixel[perm], torch.stack([px[perm], py[perm]], -1)


def _alpha(means2d: torch.Tensor, conics: torch.Tensor, opacities: torch.Tensor,
           flat: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """Alpha of each (pixel, Gaussian) pair; 0 where below 1/255 (skipped, as gsplat does).
    ``opacities`` are per camera and Gaussian (C, N)."""
    delta = xy.to(means2d.dtype) + 0.5 - means2d.reshape(-1, 2).index_select(0, flat)
    con = conics.reshape(-1, 3).index_select(0, flat)
    sigma = 0.5 * (con[:, 0] * delta[:, 0] ** 2 + con[:, 2] * delta[:, 1] ** 2) \
        + con[:, 1] * delta[:, 0] * delta[:, 1]
    alpha = torch.clamp_max(opacities.reshape(-1).index_select(0, flat) * torch.exp(-sigma),
                            ALPHA_MAX)
    return torch.where((sigma >= 0) & (alpha >= ALPHA_MIN), alpha, torch.zeros_like(alpha))


def _transmittance(alpha: torch.Tensor, pixel: torch.Tensor) -> torch.Tensor:
    """T before each pair along its pixel's depth-sorted run (segmented, in float64)."""
    log_keep = torch.log1p(-alpha.double())
    exclusive = torch.cumsum(log_keep, 0) - log_keep
    starts = torch.ones_like(pixel, dtype=torch.bool)
    starts[1:] = pixel[1:] != pixel[:-1]
    run = torch.cumsum(starts.long(), 0) - 1
    return torch.exp(exclusive - exclusive[starts][run])


def composite_weights(means2d: torch.Tensor, conics: torch.Tensor, opacities: torch.Tensor,
                      radii: torch.Tensor, depths: torch.Tensor, width: int, height: int
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Blending weight alpha * T of every contributing (pixel, Gaussian) pair.

    Returns ``(weights, flat, pixel)``: ``flat`` indexes the (C * N) camera-Gaussian pairs,
    ``pixel`` is a flat index into (C, H, W). Pairs that cannot contribute (alpha below
    1/255, or behind the transmittance stop) are found without autograd and dropped first:
    they change no T, so the result is exact, and autograd only sees the pairs that count.
    """
    pcam, pgid, pixel, xy = _pairs(means2d, radii, depths, width, height)
    flat = pcam * means2d.shape[1] + pgid
    with torch.no_grad():
        alpha = _alpha(means2d, conics, opacities, flat, xy)
        t_before = _transmittance(alpha, pixel)
        keep = (alpha > 0) & (t_before * (1 - alpha.double()) > T_MIN)
    flat, pixel, xy = flat[keep], pixel[keep], xy[keep]
    alpha = _alpha(means2d, conics, opacities, flat, xy)
    weights = alpha * _transmittance(alpha, pixel).to(alpha.dtype)
    return weights, flat, pixel


def splat(weights: torch.Tensor, flat: torch.Tensor, pixel: torch.Tensor, values: torch.Tensor,
          n_pixels: int) -> torch.Tensor:
    """Sum of ``weights * values[flat]`` per pixel: (n_pixels, D) from (C * N, D) values.

    A sparse (pixels x Gaussians) product, so the (pairs x D) intermediate of a gather is
    never built; autograd reaches ``values`` (and ``weights`` when they require grad).
    """
    blend = torch.sparse_coo_tensor(torch.stack([pixel, flat]), weights,
                                    (n_pixels, values.shape[0]), check_invariants=False)
    return torch.sparse.mm(blend, values)


def _colors(means: torch.Tensor, colors: torch.Tensor, viewmats: torch.Tensor,
            sh_degree: int | None) -> torch.Tensor:
    """Per-camera colours (C, N, D): SH evaluated towards each camera, or values broadcast."""
    n_cams = viewmats.shape[0]
    if sh_degree is not None:
        centres = torch.linalg.inv(viewmats)[:, :3, 3]
        dirs = means[None] - centres[:, None]
        coeffs = colors[None].expand(n_cams, *colors.shape)
        return torch.clamp_min(eval_sh(sh_degree, coeffs, dirs) + 0.5, 0.0)
    return colors if colors.dim() == 3 else colors[None].expand(n_cams, *colors.shape)


UNSUPPORTED = {"distributed": False, "camera_model": "pinhole", "segmented": False,
               "covars": None, "with_ut": False, "with_eval3d": False, "radial_coeffs": None,
               "tangential_coeffs": None, "thin_prism_coeffs": None, "ftheta_coeffs": None,
               "viewmats_rs": None}
"""gsplat arguments this backend accepts only at their defaults (it renders undistorted
pinhole cameras on one device)."""
RENDER_MODES = ("RGB", "D", "ED", "RGB+D", "RGB+ED")


def _check_supported(options: dict) -> None:
    for key, value in options.items():
        if key == "rolling_shutter":
            if getattr(value, "name", str(value)) not in ("GLOBAL", "4"):
                raise ValueError(f"rolling_shutter={value!r}: the PyTorch rasterizer renders "
                                 "global-shutter cameras only")
            continue
        if key not in UNSUPPORTED:
            raise TypeError(f"rasterization() got an unexpected keyword argument {key!r}")
        default = UNSUPPORTED[key]
        if (value is not default) and value != default:
            raise ValueError(f"{key}={value!r}: the PyTorch rasterizer supports only "
                             f"{key}={default!r} (gsplat on CUDA supports the rest)")


def rasterization(means: torch.Tensor, quats: torch.Tensor, scales: torch.Tensor,
                  opacities: torch.Tensor, colors: torch.Tensor, viewmats: torch.Tensor,
                  Ks: torch.Tensor, width: int, height: int, near_plane: float = 0.01,
                  far_plane: float = 1e10, radius_clip: float = 0.0, eps2d: float = 0.3,
                  sh_degree: int | None = None, packed: bool = True, tile_size: int = 16,
                  backgrounds: torch.Tensor | None = None, render_mode: str = "RGB",
                  sparse_grad: bool = False, absgrad: bool = False,
                  rasterize_mode: str = "classic", channel_chunk: int = 32, **options,
                  ) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """``gsplat.rasterization`` in PyTorch: the same arguments, the same returns.

    Renders (C, H, W, D) colours (SH + 0.5 clamped at 0 with ``sh_degree``, else the given
    (N, D) or (C, N, D) values; ``render_mode`` appends expected (``D``) or alpha-normalised
    (``ED``) depth), (C, H, W, 1) alphas, and ``meta`` with what gsplat's strategies read
    (``means2d``, ``radii``, ``depths``, ``conics``, ``width``, ``height``, ``n_cameras``,
    ``gaussian_ids``). ``packed``, ``tile_size``, ``sparse_grad`` and ``channel_chunk``
    change how gsplat schedules work, not the result, and are ignored; ``absgrad`` is not
    tracked. Distortion, rolling shutter and distributed rendering raise ``ValueError``.
    """
    _check_supported(options)
    if render_mode not in RENDER_MODES:
        raise ValueError(f"render_mode must be one of {', '.join(RENDER_MODES)}; "
                         f"got {render_mode!r}")
    if rasterize_mode not in ("classic", "antialiased"):
        raise ValueError(f"rasterize_mode must be 'classic' or 'antialiased'; "
                         f"got {rasterize_mode!r}")
    renders, alphas, meta = _render(
        means, quats, scales, opacities, colors, viewmats, Ks, width, height,
        sh_degree=sh_degree, eps2d=eps2d, near_plane=near_plane, far_plane=far_plane,
        radius_clip=radius_clip, antialiased=rasterize_mode == "antialiased",
        depth=render_mode != "RGB")
    if render_mode != "RGB":
        depth = renders[..., -1:]
        if render_mode.endswith("ED"):
            depth = depth / alphas.clamp_min(1e-10)
        color = renders[..., :-1]
        renders = depth if render_mode in ("D", "ED") else torch.cat([color, depth], -1)
    if backgrounds is not None:
        renders = renders + (1 - alphas) * backgrounds[:, None, None, :]
    return renders, alphas, meta


def rasterization_with_features(means: torch.Tensor, quats: torch.Tensor,
                                scales: torch.Tensor, opacities: torch.Tensor,
                                colors: torch.Tensor, features: torch.Tensor,
                                viewmats: torch.Tensor, Ks: torch.Tensor, width: int,
                                height: int, **kwargs
                                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    """RGB with trainable geometry and (N, F) ``features`` blended with the same weights,
    detached from the geometry: FiT3D's two renders from one projection and sort.

    Returns (colours, alphas, features (C, H, W, F), meta); keyword arguments as
    :func:`rasterization` (``render_mode`` RGB only).
    """
    if kwargs.get("render_mode", "RGB") != "RGB" or kwargs.get("backgrounds") is not None:
        raise ValueError("rasterization_with_features renders RGB without background")
    _check_supported({k: v for k, v in kwargs.items() if k in UNSUPPORTED})
    known = ("near_plane", "far_plane", "radius_clip", "eps2d", "sh_degree")
    return _render(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
                   detached_features=features,
                   antialiased=kwargs.get("rasterize_mode", "classic") == "antialiased",
                   **{k: kwargs[k] for k in known if k in kwargs})


def _render(means: torch.Tensor, quats: torch.Tensor, scales: torch.Tensor,
            opacities: torch.Tensor, colors: torch.Tensor, viewmats: torch.Tensor,
            Ks: torch.Tensor, width: int, height: int, sh_degree: int | None = None,
            eps2d: float = 0.3, near_plane: float = 0.01, far_plane: float = 1e10,
            radius_clip: float = 0.0, antialiased: bool = False, depth: bool = False,
            detached_features: torch.Tensor | None = None):
    """Project, sort and composite; with ``detached_features`` also their render (4-tuple)."""
    proj = project(means, quats, scales, viewmats, Ks, width, height, eps2d, near_plane,
                   far_plane, radius_clip)
    n_cams, n = viewmats.shape[0], means.shape[0]
    values = _colors(means, colors, viewmats, sh_degree)
    if depth:
        values = torch.cat([values, proj["depths"][..., None]], -1)
    opac = opacities[None].expand(n_cams, n)
    if antialiased:
        opac = opac * proj["compensations"]
    weights, flat, pixel = composite_weights(
        proj["means2d"], proj["conics"], opac, proj["radii"], proj["depths"], width, height)
    total = n_cams * height * width
    renders = splat(weights, flat, pixel, values.reshape(n_cams * n, -1), total)
    alphas = torch.zeros(total, dtype=weights.dtype, device=weights.device).index_add(
        0, pixel, weights)
    meta = {**proj, "opacities": opac, "width": width, "height": height, "n_cameras": n_cams,
            "camera_ids": None, "gaussian_ids": None, "tile_size": None}
    out = (renders.reshape(n_cams, height, width, -1), alphas.reshape(n_cams, height, width, 1))
    if detached_features is None:
        return (*out, meta)
    feats = splat(weights.detach(), flat % n, pixel, detached_features, total)
    return (*out, feats.reshape(n_cams, height, width, -1), meta)
