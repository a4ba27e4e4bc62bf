"""Pure-PyTorch Gaussian rasterizer: gsplat's ``rasterization`` on any device.

It follows gsplat's conventions so the two backends are interchangeable: OpenCV
world-to-camera ``viewmats``, pixel centres at ``+0.5``, a 2D covariance blur ``eps2d``
(0.3), screen radii of 3.33 sigma per axis, alpha clamped at 0.999, contributions below
1/255 skipped, front-to-back compositing by camera-space depth (equal depths in index
order) that stops before the transmittance would fall to 1e-4. Projection is autograd;
compositing (:mod:`fit3d_hub.render.compositing`) works on screen tiles as gsplat's
kernels do and has its own backward, so memory stays bounded.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fit3d_hub.render.compositing import (
    SLOTS,
    TILE,
    Composite,
    TileLists,
    block_bytes,
    intersect_tiles,
    reach,
)
from fit3d_hub.render.sh import eval_sh

RADIUS_SIGMAS = 3.33
MEMORY_BUDGET = 4 << 30
"""Bytes a render may need beyond its inputs before it is refused (``memory_budget``)."""


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
            radius_clip: float = 0.0, camera_model: str = "pinhole"
            ) -> dict[str, torch.Tensor]:
    """EWA projection of N Gaussians into C cameras (gsplat's ``pinhole`` or ``ortho``:
    ``u = fx x + cx`` whatever the depth, as gsplat's ``_ortho_proj``).

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
    if camera_model == "ortho":
        jac = torch.stack([fx.expand_as(tz), zeros, zeros, zeros, fy.expand_as(tz), zeros],
                          -1).reshape(*tz.shape, 2, 3)
    else:
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
    if camera_model == "ortho":
        means2d = torch.stack([fx * tx + cx, fy * ty + cy], -1)
    else:
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
            "compensations": compensations, "cov_diag": torch.stack([a, c], -1)}


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


CAMERA_MODELS = ("pinhole", "ortho")
UNSUPPORTED = {"distributed": False, "segmented": False,
               "covars": None, "with_ut": False, "with_eval3d": False, "radial_coeffs": None,
               "tangential_coeffs": None, "thin_prism_coeffs": None, "ftheta_coeffs": None,
               "viewmats_rs": None}
"""gsplat arguments this backend accepts only at their defaults (it renders undistorted
pinhole or orthographic cameras on one device)."""
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
                  rasterize_mode: str = "classic", channel_chunk: int = 32,
                  camera_model: str = "pinhole", memory_budget: int | None = None, **options,
                  ) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """``gsplat.rasterization`` in PyTorch: the same arguments, the same returns.

    Renders (C, H, W, D) colours (SH + 0.5 clamped at 0 with ``sh_degree``, else the given
    (N, D) or (C, N, D) values; ``render_mode`` appends expected (``D``) or alpha-normalised
    (``ED``) depth), (C, H, W, 1) alphas, and ``meta`` with what gsplat's strategies read
    (``means2d``, ``radii``, ``depths``, ``conics``, ``width``, ``height``, ``n_cameras``,
    ``gaussian_ids``). ``packed``, ``tile_size``, ``sparse_grad`` and ``channel_chunk``
    change how gsplat schedules work, not the result, and are ignored; ``absgrad`` is not
    tracked. Distortion, rolling shutter and distributed rendering raise ``ValueError``.

    ``memory_budget`` (ours; bytes, default ``MEMORY_BUDGET``) refuses, with the estimate,
    a render that would need more beyond its inputs. A camera that sees no Gaussian renders
    zeros (alpha 0).
    """
    _check_supported(options)
    if camera_model not in CAMERA_MODELS:
        raise ValueError(f"camera_model={camera_model!r}: the PyTorch rasterizer renders "
                         f"{' and '.join(CAMERA_MODELS)} cameras (gsplat on CUDA the rest)")
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
        depth=render_mode != "RGB", memory_budget=memory_budget, camera_model=camera_model)
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
    known = ("near_plane", "far_plane", "radius_clip", "eps2d", "sh_degree", "memory_budget")
    return _render(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
                   detached_features=features,
                   antialiased=kwargs.get("rasterize_mode", "classic") == "antialiased",
                   **{k: kwargs[k] for k in known if k in kwargs})


def _render(means: torch.Tensor, quats: torch.Tensor, scales: torch.Tensor,
            opacities: torch.Tensor, colors: torch.Tensor, viewmats: torch.Tensor,
            Ks: torch.Tensor, width: int, height: int, sh_degree: int | None = None,
            eps2d: float = 0.3, near_plane: float = 0.01, far_plane: float = 1e10,
            radius_clip: float = 0.0, antialiased: bool = False, depth: bool = False,
            detached_features: torch.Tensor | None = None, memory_budget: int | None = None,
            camera_model: str = "pinhole"):
    """Project, sort and composite; with ``detached_features`` also their render (4-tuple)."""
    check_inputs(means, quats, scales, opacities, viewmats, Ks, width, height)
    proj = project(means, quats, scales, viewmats, Ks, width, height, eps2d, near_plane,
                   far_plane, radius_clip, camera_model)
    n_cams, n = viewmats.shape[0], means.shape[0]
    values = _colors(means, colors, viewmats, sh_degree)
    if depth:
        values = torch.cat([values, proj["depths"][..., None]], -1)
    opac = opacities[None].expand(n_cams, n)
    if antialiased:
        opac = opac * proj["compensations"]
    lists = intersect_tiles(proj["means2d"], reach(proj.pop("cov_diag"), opac, proj["radii"]),
                            proj["depths"], width, height, proj["conics"], opac)
    check_memory(lists, values.shape[-1] + (0 if detached_features is None
                                            else detached_features.shape[-1]),
                 values.element_size(), memory_budget)
    feats = detached_features if detached_features is not None else values.new_zeros(n, 0)
    renders, alphas, rendered_feats = Composite.apply(
        proj["means2d"], proj["conics"], opac.contiguous(), values.contiguous(), feats, lists,
        SLOTS)
    meta = {**proj, "opacities": opac, "width": width, "height": height, "n_cameras": n_cams,
            "camera_ids": None, "gaussian_ids": None, "tile_size": TILE,
            "n_isects": len(lists.ids)}
    if detached_features is None:
        return renders, alphas, meta
    return renders, alphas, rendered_feats, meta


def check_inputs(means: torch.Tensor, quats: torch.Tensor, scales: torch.Tensor,
                 opacities: torch.Tensor, viewmats: torch.Tensor, Ks: torch.Tensor,
                 width: int, height: int) -> None:
    """One clear line for input no render can come from."""
    n = means.shape[0]
    shapes = {"means": (means, (n, 3)), "quats": (quats, (n, 4)), "scales": (scales, (n, 3)),
              "opacities": (opacities, (n,))}
    for name, (t, shape) in shapes.items():
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must have shape {shape} for {n} Gaussians; "
                             f"got {tuple(t.shape)}")
        bad = int((~torch.isfinite(t)).sum())
        if bad:
            raise ValueError(f"{name} holds {bad} non-finite value(s)")
    if n and not bool((scales > 0).all()):
        raise ValueError(f"scales must be positive (activated, not log-scales); "
                         f"{int((scales <= 0).sum())} are zero or negative")
    if width < 1 or height < 1:
        raise ValueError(f"width and height must be positive; got {width}x{height}")
    if viewmats.dim() != 3 or viewmats.shape[1:] != (4, 4) or Ks.shape != (len(viewmats), 3, 3):
        raise ValueError(f"viewmats must be (C, 4, 4) and Ks (C, 3, 3); got "
                         f"{tuple(viewmats.shape)} and {tuple(Ks.shape)}")


def render_bytes(lists: TileLists, channels: int, itemsize: int) -> int:
    """What a render needs beyond its inputs: tile lists, outputs and their gradients, and
    one block's working set."""
    pixels = lists.n_tiles * TILE * TILE
    return (16 * len(lists.ids) + 3 * pixels * (channels + 1) * itemsize
            + block_bytes(lists, itemsize))


def check_memory(lists: TileLists, channels: int, itemsize: int,
                 budget: int | None = None) -> None:
    """Refuse, before allocating, a render that would need more than ``budget`` bytes."""
    budget = MEMORY_BUDGET if budget is None else budget
    need = render_bytes(lists, channels, itemsize)
    if need > budget:
        raise MemoryError(
            f"this render needs ~{need / 2**30:.2f} GiB ({len(lists.ids):,} tile "
            f"intersections, {int(lists.counts.max()):,} Gaussians on the busiest tile), over "
            f"the {budget / 2**30:.2f} GiB memory budget; render fewer or smaller Gaussians, "
            "fewer cameras at once, or raise memory_budget")
