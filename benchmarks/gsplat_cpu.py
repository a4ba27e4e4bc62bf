"""gsplat's own pure-PyTorch reference pipeline (``gsplat.rendering._rasterization``) on CPU.

That pipeline still calls three CUDA pieces: the tile intersection (``isect_tiles``), the
index kernel (``rasterize_to_indices_in_range``) and nerfacc's packed scans. This module
ports each faithfully to PyTorch on CPU, vectorised as one would write them by hand, and
runs gsplat's own Python around them: projection (``_fully_fused_projection``), offsets
(``_isect_offset_encode``), the batched loop (``_rasterize_to_pixels``) and its autograd
``accumulate``. It is a yardstick for the benchmarks and an oracle for the tests, not part
of the product (which has its own PyTorch rasterizer).

    with gsplat_reference_on_cpu():
        colors, alphas, meta = gsplat_reference(means, quats, scales, opacities, colors, ...)
"""

from __future__ import annotations

import contextlib
import math
import sys
import types

import torch

ALPHA_THRESHOLD = 1.0 / 255.0
T_STOP = 1e-4


def isect_tiles(means2d, radii, depths, tile_size, tile_width, tile_height, sort=True,
                packed=False, n_images=None, image_ids=None, gaussian_ids=None):
    """``gsplat.cuda._wrapper.isect_tiles`` (unpacked) as ``_torch_impl._isect_tiles``
    computes it, without its per-Gaussian Python loop."""
    if packed:
        raise NotImplementedError("packed intersections are not ported")
    n = means2d.shape[-2]
    i_count = math.prod(means2d.shape[:-2])
    means2d = means2d.reshape(i_count, n, 2)
    radii = radii.reshape(i_count, n, 2)
    depths = depths.reshape(i_count, n)
    tile_min = torch.floor(means2d / tile_size - radii / tile_size).int()
    tile_max = torch.ceil(means2d / tile_size + radii / tile_size).int()
    for k, limit in ((0, tile_width), (1, tile_height)):
        tile_min[..., k] = tile_min[..., k].clamp(0, limit)
        tile_max[..., k] = tile_max[..., k].clamp(0, limit)
    span = tile_max - tile_min
    counts = span.prod(-1) * (radii > 0).all(-1)
    flat_counts = counts.flatten().long()
    owner = torch.repeat_interleave(torch.arange(i_count * n), flat_counts)
    start = torch.cumsum(flat_counts, 0) - flat_counts
    local = torch.arange(len(owner)) - start[owner]
    width = span[..., 0].flatten().long()[owner]
    tx = tile_min[..., 0].flatten().long()[owner] + local % width.clamp_min(1)
    ty = tile_min[..., 1].flatten().long()[owner] + local // width.clamp_min(1)
    tile_ids = ty * tile_width + tx
    image = owner // n
    tile_n_bits = (tile_width * tile_height).bit_length()
    depth_bits = depths.float().contiguous().view(torch.int32).flatten()[owner].long() \
        & 0xFFFFFFFF
    isect_ids = (image << (tile_n_bits + 32)) | (tile_ids << 32) | depth_bits
    flatten_ids = owner.int()
    if sort:  # the CUDA side's radix sort is stable: equal depths keep index order
        isect_ids, order = torch.sort(isect_ids, stable=True)
        flatten_ids = flatten_ids[order]
    return counts.reshape(means2d.shape[:-1]).int(), isect_ids, flatten_ids


def rasterize_to_indices_in_range(range_start, range_end, transmittances, means2d, conics,
                                  opacities, image_width, image_height, tile_size,
                                  isect_offsets, flatten_ids):
    """The CUDA kernel ``rasterize_to_indices_3dgs``: for every pixel, the Gaussians of its
    tile in batches ``[range_start, range_end)`` of ``tile_size**2``, front to back from its
    transmittance, that contribute (alpha >= 1/255) before T would fall to 1e-4. Returns
    (gaussian ids, pixel ids, image ids), grouped by pixel in row-major order."""
    i_count = math.prod(means2d.shape[:-2])
    n = means2d.shape[-2]
    tile_h, tile_w = isect_offsets.shape[-2:]
    means2d = means2d.reshape(i_count * n, 2)
    conics = conics.reshape(i_count * n, 3)
    opacities = opacities.reshape(i_count * n)
    trans = transmittances.reshape(i_count, image_height * image_width)
    block = tile_size * tile_size
    offsets = torch.cat([isect_offsets.flatten().long(), torch.tensor([len(flatten_ids)])])
    tiles = torch.arange(i_count * tile_h * tile_w)
    begin = offsets[:-1] + range_start * block
    end = torch.minimum(offsets[1:], offsets[:-1] + range_end * block)
    busy = tiles[end > begin]
    local = torch.arange(block)
    out_g, out_p = [], []
    for chunk in torch.split(busy, 64):
        k = int((end[chunk] - begin[chunk]).max())
        slot = begin[chunk, None] + torch.arange(k)[None]  # (T, K)
        real = slot < end[chunk, None]
        gid = flatten_ids[slot.clamp_max(len(flatten_ids) - 1)].long()
        image = chunk // (tile_h * tile_w)
        tile = chunk % (tile_h * tile_w)
        py = (tile // tile_w)[:, None] * tile_size + local[None] // tile_size  # (T, P)
        px = (tile % tile_w)[:, None] * tile_size + local[None] % tile_size
        inside = (py < image_height) & (px < image_width)
        pix = (py * image_width + px).clamp_max(image_height * image_width - 1)
        t0 = torch.where(inside, trans[image[:, None], pix], torch.zeros(()))
        with torch.no_grad():
            mx, my = means2d[gid, 0], means2d[gid, 1]
            dx = mx[..., None] - (px[:, None] + 0.5)
            dy = my[..., None] - (py[:, None] + 0.5)
            a, b, c = (conics[gid, j][..., None] for j in range(3))
            sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
            alpha = torch.clamp_max(opacities[gid][..., None] * torch.exp(-sigma), 0.999)
            use = (sigma >= 0) & (alpha >= ALPHA_THRESHOLD) & real[..., None] & inside[:, None]
            alpha = torch.where(use, alpha, torch.zeros(()))
            keep = torch.cumprod(1 - alpha, dim=1)
            t_before = t0[:, None] * torch.cat([torch.ones_like(keep[:, :1]), keep[:, :-1]], 1)
            stop = use & (t_before * (1 - alpha) <= T_STOP)
            emit = use & (torch.cumsum(stop.int(), dim=1) == 0)
        tt, kk, pp = torch.nonzero(emit.permute(0, 2, 1), as_tuple=True)  # pixel-major
        out_g.append(gid[tt, pp] % n)
        out_p.append(image[tt] * image_height * image_width + pix[tt, kk])
    if not out_g:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty, empty
    gauss = torch.cat(out_g)
    pixel = torch.cat(out_p)
    order = torch.sort(pixel, stable=True).indices  # the kernel writes pixel-major
    gauss, pixel = gauss[order], pixel[order]
    return gauss, pixel % (image_width * image_height), pixel // (image_width * image_height)


def _exclusive_prod(values: torch.Tensor, ray_indices: torch.Tensor) -> torch.Tensor:
    """nerfacc's packed exclusive product per ray (ray_indices sorted), in log space."""
    logs = torch.log(values)
    inclusive = torch.cumsum(logs, 0)
    exclusive = inclusive - logs
    first = torch.ones_like(ray_indices, dtype=torch.bool)
    first[1:] = ray_indices[1:] != ray_indices[:-1]
    segment = torch.cumsum(first.long(), 0) - 1
    return torch.exp(exclusive - exclusive[first][segment])


def render_weight_from_alpha(alphas, packed_info=None, ray_indices=None, n_rays=None,
                             prefix_trans=None):
    trans = _exclusive_prod(1 - alphas, ray_indices)
    return alphas * trans, trans


def accumulate_along_rays(weights, values=None, ray_indices=None, n_rays=None):
    src = weights[:, None] if values is None else weights[:, None] * values
    out = torch.zeros(n_rays, src.shape[-1], dtype=src.dtype, device=src.device)
    return out.index_add(0, ray_indices, src)


def _spherical_harmonics(degrees_to_use, dirs, coeffs, masks=None):
    from gsplat.cuda._torch_impl import _spherical_harmonics as sh

    colors = sh(degrees_to_use, dirs, coeffs)
    return colors if masks is None else colors * masks[..., None]


@contextlib.contextmanager
def gsplat_reference_on_cpu():
    """Route gsplat's reference pipeline through the CPU ports above."""
    import gsplat.cuda._torch_impl as impl
    import gsplat.cuda._wrapper as wrapper
    import gsplat.rendering as rendering

    nerfacc = types.ModuleType("nerfacc")
    nerfacc.render_weight_from_alpha = render_weight_from_alpha
    nerfacc.accumulate_along_rays = accumulate_along_rays
    saved = {"isect_tiles": rendering.isect_tiles,
             "isect_offset_encode": rendering.isect_offset_encode,
             "spherical_harmonics": rendering.spherical_harmonics,
             "indices": wrapper.rasterize_to_indices_in_range,
             "nerfacc": sys.modules.get("nerfacc")}
    rendering.isect_tiles = isect_tiles
    rendering.isect_offset_encode = impl._isect_offset_encode
    rendering.spherical_harmonics = _spherical_harmonics
    wrapper.rasterize_to_indices_in_range = rasterize_to_indices_in_range
    sys.modules["nerfacc"] = nerfacc
    try:
        yield
    finally:
        rendering.isect_tiles = saved["isect_tiles"]
        rendering.isect_offset_encode = saved["isect_offset_encode"]
        rendering.spherical_harmonics = saved["spherical_harmonics"]
        wrapper.rasterize_to_indices_in_range = saved["indices"]
        if saved["nerfacc"] is None:
            sys.modules.pop("nerfacc", None)
        else:
            sys.modules["nerfacc"] = saved["nerfacc"]


def gsplat_reference(*args, **kwargs):
    """``gsplat.rendering._rasterization`` (call inside :func:`gsplat_reference_on_cpu`)."""
    from gsplat.rendering import _rasterization

    return _rasterization(*args, **kwargs)
