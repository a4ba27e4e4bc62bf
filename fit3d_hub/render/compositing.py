"""Front-to-back compositing of projected Gaussians over screen tiles, with its own backward.

The work is laid out as gsplat's CUDA kernels lay it out: each camera's image is cut into
square tiles, every tile gets the list of Gaussians whose screen box touches it, sorted by
depth (equal depths in index order), and each pixel composites its tile's list front to
back, skipping alphas below 1/255 and stopping before the transmittance would fall to 1e-4.
Tiles with similar list lengths are processed together as dense (tiles x Gaussians x
pixels) blocks, so the per-pair work is broadcast arithmetic and matrix products, with no
sort or gather per (pixel, Gaussian) pair.

Long lists are walked in segments that carry each pixel's transmittance, and a block is
left as soon as all its pixels have stopped. Nothing per pair is kept for the backward
pass: like 3DGS's backward it recomputes the alphas of each segment from the projected
Gaussians and carries the weight behind each pair from the back of the list. Memory is the
tile lists (one int64 per tile intersection), the outputs, each segment's starting
transmittance, and one segment's working set, which ``SLOTS`` bounds.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

TILE = 8
ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.999
T_MIN = 1e-4
SLOTS = 1 << 20
"""(tile, Gaussian, pixel) slots a segment holds at most."""
WORKING_COPIES = 14
"""Arrays of a block's size alive at once in the backward pass (alphas, weights, their
partials, the gradient terms): what a block costs is about this many slots per slot."""


@dataclass
class TileLists:
    """Every camera tile's Gaussians, front to back."""

    ids: torch.Tensor  # (n_isects,) flat camera * N + Gaussian, depth-sorted per tile
    offsets: torch.Tensor  # (n_tiles + 1,) start of each tile's run in ``ids``
    n_cams: int
    tiles_x: int
    tiles_y: int
    width: int
    height: int

    @property
    def n_tiles(self) -> int:
        return self.n_cams * self.tiles_x * self.tiles_y

    @property
    def counts(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]


def reach(cov_diag: torch.Tensor, opacities: torch.Tensor, radii: torch.Tensor
          ) -> torch.Tensor:
    """Screen half-extents (C, N, 2) beyond which a Gaussian's alpha is under 1/255:
    opacity * exp(-s^2 / 2) < 1/255 at s = sqrt(2 ln(255 opacity)) standard deviations. At
    full opacity that is gsplat's 3.33; fainter Gaussians reach less far (and one under
    1/255 at its centre nowhere), so tiles they cannot change are left out of their lists."""
    sigmas = torch.sqrt(2 * torch.log(255 * opacities.detach()).clamp_min(0))
    extent = sigmas[..., None] * cov_diag.detach().clamp_min(0).sqrt()
    return torch.minimum(extent, radii.to(extent.dtype)) * (radii > 0)


def tile_falloff_min(means2d: torch.Tensor, conics: torch.Tensor, tx: torch.Tensor,
                     ty: torch.Tensor) -> torch.Tensor:
    """The smallest sigma = 0.5 a dx^2 + b dx dy + 0.5 c dy^2 (d = pixel - mean) over the
    rectangle spanned by tile (tx, ty)'s pixel centres, for (K, 2) means and (K, 3) conics.

    The form is convex, so the minimum is 0 when the mean lies inside, else on an edge: on
    each edge it is a 1-D quadratic whose minimiser is clamped to the edge.
    """
    x0 = (tx * TILE).to(means2d.dtype) + 0.5 - means2d[:, 0]
    y0 = (ty * TILE).to(means2d.dtype) + 0.5 - means2d[:, 1]
    x1, y1 = x0 + (TILE - 1), y0 + (TILE - 1)
    a, b, c = conics.unbind(-1)

    def sigma(dx, dy):
        return 0.5 * a * dx * dx + b * dx * dy + 0.5 * c * dy * dy

    def along_x(dy):  # the edge at fixed dy: minimiser dx = -b dy / a, clamped
        return sigma(torch.minimum(torch.maximum(-b * dy / a, x0), x1), dy)

    def along_y(dx):
        return sigma(dx, torch.minimum(torch.maximum(-b * dx / c, y0), y1))

    edges = torch.stack([along_x(y0), along_x(y1), along_y(x0), along_y(x1)]).amin(0)
    inside = (x0 <= 0) & (x1 >= 0) & (y0 <= 0) & (y1 >= 0)
    return torch.where(inside, torch.zeros_like(edges), edges)


def intersect_tiles(means2d: torch.Tensor, radii: torch.Tensor, depths: torch.Tensor,
                    width: int, height: int, conics: torch.Tensor | None = None,
                    opacities: torch.Tensor | None = None) -> TileLists:
    """gsplat's tile intersection: a Gaussian with screen radii (rx, ry) touches the tiles
    from floor((m - r) / tile) to ceil((m + r) / tile); lists are sorted by depth, stably.
    ``radii`` may be the tighter :func:`reach` (floats).

    With ``conics`` and ``opacities`` (C, N) the tiles of that box where the Gaussian's alpha
    stays under 1/255 at every pixel centre (the ellipse misses the tile) are left out too:
    compositing would skip those pairs anyway.
    """
    n_cams, n = depths.shape
    tile = TILE
    tiles_x, tiles_y = -(-width // tile), -(-height // tile)
    m = means2d.detach()
    r = radii.to(m.dtype)
    lo = torch.floor((m - r) / tile).long()
    hi = torch.ceil((m + r) / tile).long()
    lo[..., 0].clamp_(0, tiles_x)
    hi[..., 0].clamp_(0, tiles_x)
    lo[..., 1].clamp_(0, tiles_y)
    hi[..., 1].clamp_(0, tiles_y)
    span = (hi - lo).clamp_min(0)
    counts = (span[..., 0] * span[..., 1] * (radii > 0).all(-1)).flatten()
    device = depths.device
    owner = torch.repeat_interleave(torch.arange(n_cams * n, device=device), counts)
    start = torch.cumsum(counts, 0) - counts
    local = torch.arange(len(owner), device=device) - start[owner]
    span_x = span[..., 0].flatten()[owner].clamp_min(1)
    tx = lo[..., 0].flatten()[owner] + local % span_x
    ty = lo[..., 1].flatten()[owner] + local // span_x
    if conics is not None and len(owner):
        # alpha = opacity exp(-sigma) >= 1/255 needs sigma <= ln(255 opacity); the margin
        # keeps pairs that rounding in compositing could bring just over the cut-off
        limit = torch.log(255 * opacities.detach().flatten()[owner]) + 1e-3
        near = tile_falloff_min(m.reshape(-1, 2)[owner], conics.detach().reshape(-1, 3)[owner],
                                tx, ty) <= limit
        owner, tx, ty = owner[near], tx[near], ty[near]
    cam = owner // n
    tile_id = (cam * tiles_y + ty) * tiles_x + tx
    # depth rank within each camera (stable: equal depths keep index order), then one sort
    # of the intersections by (tile, rank)
    order = torch.argsort(depths.detach(), dim=1, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(n, device=device).expand_as(order))
    key = tile_id * n + rank.flatten()[owner]
    perm = torch.argsort(key)
    n_tiles = n_cams * tiles_x * tiles_y
    offsets = torch.zeros(n_tiles + 1, dtype=torch.long, device=device)
    offsets[1:] = torch.cumsum(torch.bincount(tile_id, minlength=n_tiles), 0)
    return TileLists(owner[perm], offsets, n_cams, tiles_x, tiles_y, width, height)


def blocks(lists: TileLists, slots: int = SLOTS) -> list[torch.Tensor]:
    """Groups of tiles (longest lists first) whose padded block fits in ``slots``."""
    counts = lists.counts
    busy = torch.nonzero(counts > 0).flatten()
    if not len(busy):
        return []
    busy = busy[torch.argsort(counts[busy], descending=True, stable=True)]
    sizes = counts[busy].tolist()
    pixels = TILE * TILE
    out, first = [], 0
    while first < len(busy):
        k = sizes[first]  # the longest list of the block pads the others
        take = max(1, min(len(busy) - first, slots // max(1, k * pixels)))
        out.append(busy[first:first + take])
        first += take
    return out


def block_bytes(lists: TileLists, itemsize: int, slots: int = SLOTS) -> int:
    """Largest working set of one segment: what compositing needs beyond inputs, outputs
    and the tile lists (a segment holds at most ``slots`` slots, or 16 list entries of one
    tile)."""
    if not len(lists.ids):
        return 0
    return WORKING_COPIES * itemsize * max(slots, 16 * TILE * TILE)


@functools.cache
def _pixel_basis(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(6, P) monomials [x^2, xy, y^2, x, y, 1] of the pixel centres of a tile, relative to
    the tile's centre: the same for every tile."""
    local = torch.arange(TILE * TILE, device=device)
    x = (local % TILE).to(dtype) + 0.5 - TILE / 2
    y = (local // TILE).to(dtype) + 0.5 - TILE / 2
    return torch.stack([x * x, x * y, y * y, x, y, torch.ones_like(x)])


class _Segment:
    """A block of tiles and a stretch of their Gaussian lists: each Gaussian's quadratic
    form, padded to the longest list in the stretch.

    sigma = 0.5 a dx^2 + b dx dy + 0.5 c dy^2 (d = pixel - mean) expands, in coordinates
    relative to the tile's centre, into six coefficients per (tile, Gaussian) times the six
    monomials of the pixel: one matrix product gives sigma for the whole segment.
    """

    def __init__(self, lists: TileLists, tiles: torch.Tensor, first: int, stop: int,
                 means2d: torch.Tensor, conics: torch.Tensor, opacities: torch.Tensor):
        counts = lists.counts[tiles]
        index = torch.arange(first, stop, device=tiles.device)[None]
        real = index < counts[:, None]  # (T, K)
        slot = lists.offsets[tiles, None] + index
        self.ids = lists.ids[slot.clamp_max(len(lists.ids) - 1)] * real
        in_cam = tiles % (lists.tiles_x * lists.tiles_y)
        centre = torch.stack([(in_cam % lists.tiles_x) * TILE + TILE / 2,
                              (in_cam // lists.tiles_x) * TILE + TILE / 2], -1)
        m = means2d.reshape(-1, 2)[self.ids] - centre[:, None].to(means2d.dtype)  # (T, K, 2)
        con = conics.reshape(-1, 3)[self.ids]
        self.mx, self.my = m[..., 0], m[..., 1]
        self.a, self.b, self.c = con[..., 0], con[..., 1], con[..., 2]
        # padded slots get opacity 0, so their alpha falls under the 1/255 cut-off
        self.opac = opacities.reshape(-1)[self.ids] * real
        a, b, c, mx, my = self.a, self.b, self.c, self.mx, self.my
        self.coeff = torch.stack([0.5 * a, b, 0.5 * c, -(a * mx + b * my), -(b * mx + c * my),
                                  0.5 * a * mx * mx + b * mx * my + 0.5 * c * my * my], -1)

    def falloff(self, basis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """exp(-sigma) and opacity * exp(-sigma) (the raw alpha), both (T, K, P)."""
        sigma = (self.coeff @ basis).clamp_min_(0.0)  # rounding can dip just below 0
        gauss = torch.exp(sigma.neg_())
        return gauss, gauss * self.opac[..., None]

    @staticmethod
    def weights(raw: torch.Tensor, start: torch.Tensor):
        """From the raw alphas and the transmittance ``start`` (T, P) at the segment's
        start: the alphas of the contributing pairs (0 elsewhere), the transmittance before
        each, the blending weights alpha * T (all (T, K, P)), and T after the segment."""
        alpha = raw.clamp_max(ALPHA_MAX).masked_fill_(raw < ALPHA_MIN, 0.0)
        one_minus = 1 - alpha
        keep = torch.cumprod(one_minus, dim=1).mul_(start[:, None, :])
        before = keep / one_minus
        # T only falls along the list, so the pair that would take it to 1e-4 or below and
        # every pair after it are exactly those whose T after them is that low: excluded
        # (and a pixel's T carried past its stop stays at or below 1e-4: nothing more adds)
        alpha.masked_fill_(keep <= T_MIN, 0.0)
        return alpha, before, alpha * before, keep[:, -1]


def _segments(lists: TileLists, tiles: torch.Tensor, slots: int) -> list[tuple[int, int]]:
    """Stretches [first, stop) of a block's lists, each holding at most ``slots`` slots."""
    k = int(lists.counts[tiles].max())
    step = max(16, slots // (len(tiles) * TILE * TILE))
    return [(first, min(k, first + step)) for first in range(0, k, step)]


def _tile_view(values: torch.Tensor, lists: TileLists) -> torch.Tensor:
    """(C, H, W, D) image values -> (n_tiles, TILE * TILE, D), zero-padded at the edges."""
    c, h, w, d = values.shape
    padded = values.new_zeros(c, lists.tiles_y * TILE, lists.tiles_x * TILE, d)
    padded[:, :h, :w] = values
    tiles = padded.reshape(c, lists.tiles_y, TILE, lists.tiles_x, TILE, d)
    return tiles.permute(0, 1, 3, 2, 4, 5).reshape(lists.n_tiles, TILE * TILE, d)


def _image_view(tiles: torch.Tensor, lists: TileLists) -> torch.Tensor:
    """Inverse of :func:`_tile_view`, cropped to the image."""
    d = tiles.shape[-1]
    img = tiles.reshape(lists.n_cams, lists.tiles_y, lists.tiles_x, TILE, TILE, d)
    img = img.permute(0, 1, 3, 2, 4, 5).reshape(lists.n_cams, lists.tiles_y * TILE,
                                                 lists.tiles_x * TILE, d)
    return img[:, :lists.height, :lists.width]


class Composite(torch.autograd.Function):
    """(colours, alphas, features) of C cameras from projected Gaussians.

    ``colors`` (C, N, D) couple to the geometry like RGB does; ``features`` (N, F) are
    blended with the same weights but send no gradient to the geometry (FiT3D's detached
    feature render). Gradients reach ``means2d``, ``conics``, ``opacities``, ``colors`` and
    ``features``.
    """

    @staticmethod
    def forward(ctx, means2d, conics, opacities, colors, features, lists: TileLists,
                slots: int):
        n_tiles, pixels = lists.n_tiles, TILE * TILE
        dtype, device = colors.dtype, colors.device
        out_c = torch.zeros(n_tiles, pixels, colors.shape[-1], dtype=dtype, device=device)
        out_a = torch.zeros(n_tiles, pixels, 1, dtype=dtype, device=device)
        out_f = torch.zeros(n_tiles, pixels, features.shape[-1], dtype=dtype, device=device)
        flat_colors = colors.reshape(-1, colors.shape[-1])
        n = means2d.shape[1]
        basis = _pixel_basis(dtype, device)
        starts = []  # per block, the transmittance at each segment walked (for backward)
        with torch.no_grad():
            for tiles in blocks(lists, slots):
                trans = torch.ones(len(tiles), pixels, dtype=dtype, device=device)
                starts.append([])
                for first, stop in _segments(lists, tiles, slots):
                    if not bool((trans > T_MIN).any()):
                        break  # every pixel of the block has stopped
                    starts[-1].append(trans)
                    seg = _Segment(lists, tiles, first, stop, means2d, conics, opacities)
                    _, raw = seg.falloff(basis)
                    _, _, w, trans = seg.weights(raw, trans)
                    wt = w.transpose(1, 2)
                    out_c[tiles] += wt @ flat_colors[seg.ids]
                    out_a[tiles, :, 0] += w.sum(1)
                    if features.shape[-1]:
                        out_f[tiles] += wt @ features[seg.ids % n]
        ctx.save_for_backward(means2d, conics, opacities, colors, features)
        ctx.lists, ctx.slots, ctx.starts = lists, slots, starts
        return _image_view(out_c, lists), _image_view(out_a, lists), _image_view(out_f, lists)

    @staticmethod
    def backward(ctx, g_colors, g_alpha, g_features):
        means2d, conics, opacities, colors, features = ctx.saved_tensors
        lists = ctx.lists
        n = means2d.shape[1]
        gc = _tile_view(g_colors, lists)
        ga = _tile_view(g_alpha, lists)[..., 0]
        gf = _tile_view(g_features, lists) if features.shape[-1] else None
        flat_colors = colors.reshape(-1, colors.shape[-1])
        d_means = torch.zeros_like(means2d).reshape(-1, 2)
        d_conics = torch.zeros_like(conics).reshape(-1, 3)
        d_opac = torch.zeros_like(opacities).reshape(-1)
        d_colors = torch.zeros_like(flat_colors)
        d_feats = torch.zeros_like(features)
        basis = _pixel_basis(colors.dtype, colors.device)
        geometry = any(ctx.needs_input_grad[:3])
        # the same blocks and segments the forward pass walked, each block's segments back
        # to front so that the weight behind each pair can be carried
        for tiles, block_starts in zip(blocks(lists, ctx.slots), ctx.starts, strict=True):
            spans = _segments(lists, tiles, ctx.slots)[:len(block_starts)]
            g_c = gc[tiles]  # (T, P, D)
            behind_after = torch.zeros_like(block_starts[0])
            for (first, stop), start in zip(reversed(spans), reversed(block_starts),
                                            strict=True):
                seg = _Segment(lists, tiles, first, stop, means2d, conics, opacities)
                ids = seg.ids
                gauss, raw = seg.falloff(basis)
                alpha, before, w, _ = seg.weights(raw, start)
                d_colors.index_add_(0, ids.flatten(), (w @ g_c).flatten(0, 1))
                if gf is not None:
                    d_feats.index_add_(0, (ids % n).flatten(), (w @ gf[tiles]).flatten(0, 1))
                if not geometry:
                    continue
                # dL/dalpha_i = T_i v_i - (sum of w_k v_k behind i) / (1 - alpha_i), with v
                # the upstream gradient seen by pair i (its colour . dL/dC + dL/dalpha_out)
                v = flat_colors[ids] @ g_c.transpose(1, 2) + ga[tiles][:, None, :]
                wv = w * v
                total = wv.sum(1)
                behind = (total + behind_after)[:, None, :] - torch.cumsum(wv, dim=1)
                behind_after = behind_after + total
                d_alpha = (before * v - behind / (1 - alpha)) \
                    * ((alpha > 0) & (raw < ALPHA_MAX))
                d_opac.index_add_(0, ids.flatten(), (d_alpha * gauss).sum(-1).flatten())
                # d sigma, then its moments over the tile's pixels: sums of d_sigma times
                # each monomial, from which the conic's and the mean's gradients follow
                moments = (d_alpha * raw).neg_() @ basis.T  # (T, K, 6)
                mxx, mxy, myy, m_x, m_y, m_1 = moments.unbind(-1)
                mx, my = seg.mx, seg.my
                sx, sy = m_x - mx * m_1, m_y - my * m_1  # sums of d_sigma * dx, * dy
                d_con = torch.stack([0.5 * (mxx - 2 * mx * m_x + mx * mx * m_1),
                                     mxy - mx * m_y - my * m_x + mx * my * m_1,
                                     0.5 * (myy - 2 * my * m_y + my * my * m_1)], -1)
                d_conics.index_add_(0, ids.flatten(), d_con.flatten(0, 1))
                d_mean = torch.stack([-(seg.a * sx + seg.b * sy),
                                      -(seg.b * sx + seg.c * sy)], -1)
                d_means.index_add_(0, ids.flatten(), d_mean.flatten(0, 1))
        return (d_means.reshape_as(means2d), d_conics.reshape_as(conics),
                d_opac.reshape_as(opacities), d_colors.reshape_as(colors),
                d_feats if features.shape[-1] else None, None, None)
