"""Gaussian Masked Autoencoders (GMAE; Rajasegaran et al., arXiv 2501.03229): the decoders and
what a trained model shows zero-shot.

The Gaussian decoder reads the encoder's visible tokens and ``k`` learnable queries and
predicts one 3D Gaussian per query (14 numbers: centre, scale, rotation, colour, opacity),
which are splatted with a fixed camera through the project's rasterizer contract
(:mod:`fit3d_hub.render`). The pixel decoder is MAE's (the baseline). The authors' settings
(``tekotan/video-gmae`` at 0184262) are the defaults; ``docs/faithfulness.md`` lists each.

Zero-shot, from a trained model (:func:`image_gaussians`): the Gaussians of an unmasked
image; depth-ordered layers (the image built up from the nearest Gaussians back,
:func:`depth_layers`); the rendered depth, a figure-ground mask and an edge map from its
discontinuities (:func:`depth_maps`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

CHANNELS = 14
"""Per Gaussian: centre (3), scale (3), rotation (4; the authors use 3 of them), colour (3),
opacity (1)."""
FOV = math.pi / 2
Z_OFFSET = 8.0
"""The camera looks down +z from 8 units before the Gaussians' box (the authors' viewmat)."""


def sincos_pos_embed(dim: int, grid: int, cls_token: bool = True) -> torch.Tensor:
    """MAE's fixed 2D sine-cosine position embedding ``(1, [1 +] grid**2, dim)`` (a zero row
    for the CLS token)."""
    if dim % 4:
        raise ValueError(f"a 2D sine-cosine embedding needs a width divisible by 4; got {dim}")
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4.0))
    hh, ww = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64),
                         indexing="xy")

    def one(pos: np.ndarray) -> np.ndarray:
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    emb = np.concatenate([one(ww), one(hh)], axis=1)
    if cls_token:
        emb = np.concatenate([np.zeros([1, dim]), emb], axis=0)
    return torch.from_numpy(emb).float()[None]


def _block(dim: int, heads: int) -> nn.Module:
    from timm.models.vision_transformer import Block

    return Block(dim, heads, mlp_ratio=4.0, qkv_bias=True,
                 norm_layer=functools.partial(nn.LayerNorm, eps=1e-6))


def _init_mae(module: nn.Module) -> None:
    """MAE's initialisation: xavier-uniform Linear weights, zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class _Decoder(nn.Module):
    """What both decoders share: the projection of the visible tokens, their fixed position
    code, transformer blocks and the final norm."""

    def __init__(self, encoder_dim: int, grid: int, dim: int, depth: int, heads: int):
        super().__init__()
        self.grid = grid
        self.decoder_embed = nn.Linear(encoder_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("decoder_pos_embed", sincos_pos_embed(dim, grid), persistent=False)
        self.blocks = nn.ModuleList(_block(dim, heads) for _ in range(depth))
        self.decoder_norm = nn.LayerNorm(dim, eps=1e-6)
        self.apply(_init_mae)
        nn.init.normal_(self.mask_token, std=0.02)

    def run(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.decoder_norm(x)


class GaussianDecoder(_Decoder):
    """``(B, 1 + n, C_enc)`` visible tokens (CLS first) and their patch indices ``ids_keep``
    -> ``(B, k, 14)`` raw Gaussian parameters.

    The sequence is ``[CLS, visible tokens + their position code, k queries]``; each query is
    the shared mask token plus its own learned embedding (uniform-initialised, no position
    code); a bias-free linear head reads the queries.
    """

    def __init__(self, encoder_dim: int, grid: int, num_gaussians: int, dim: int = 512,
                 depth: int = 8, heads: int = 16):
        super().__init__(encoder_dim, grid, dim, depth, heads)
        if num_gaussians < 1:
            raise ValueError(f"num_gaussians must be >= 1; got {num_gaussians}")
        self.num_gaussians = num_gaussians
        # created after MAE's initialisation, as the authors' are: uniform queries, and the
        # head with PyTorch's default initialisation
        self.queries = nn.Parameter(torch.rand(1, num_gaussians, dim))
        self.head = nn.Linear(dim, CHANNELS, bias=False)

    def forward(self, tokens: torch.Tensor, ids_keep: torch.Tensor) -> torch.Tensor:
        x = self.decoder_embed(tokens)
        pos = self.decoder_pos_embed[:, 1:].expand(len(x), -1, -1)
        pos = torch.gather(pos, 1, ids_keep[..., None].expand(-1, -1, x.shape[-1]))
        x = torch.cat([x[:, :1], x[:, 1:] + pos], dim=1)
        queries = (self.mask_token + self.queries).expand(len(x), -1, -1)
        x = self.run(torch.cat([x, queries], dim=1))
        return self.head(x[:, -self.num_gaussians:])


class PixelDecoder(_Decoder):
    """MAE's decoder (the baseline): mask tokens at the masked positions, every patch's
    position code, a linear head to the patch's pixels: ``(B, L, p * p * 3)``."""

    def __init__(self, encoder_dim: int, grid: int, patch: int, dim: int = 512,
                 depth: int = 8, heads: int = 16):
        super().__init__(encoder_dim, grid, dim, depth, heads)
        self.decoder_pred = nn.Linear(dim, patch * patch * 3)
        _init_mae(self.decoder_pred)

    def forward(self, tokens: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        x = self.decoder_embed(tokens)
        b, n = len(x), ids_restore.shape[1]
        masked = self.mask_token.expand(b, n + 1 - x.shape[1], -1)
        patches = torch.cat([x[:, 1:], masked], dim=1)
        patches = torch.gather(patches, 1, ids_restore[..., None].expand(-1, -1, x.shape[-1]))
        x = torch.cat([x[:, :1], patches], dim=1) + self.decoder_pos_embed
        return self.decoder_pred(self.run(x))[:, 1:]


@dataclass
class Gaussians:
    """Activated Gaussians ``(B, k, ...)`` in the decoder's box, camera space ahead."""

    means: torch.Tensor
    scales: torch.Tensor
    quats: torch.Tensor
    colors: torch.Tensor
    opacities: torch.Tensor

    def select(self, index: torch.Tensor) -> Gaussians:
        """Gaussians ``index`` ``(B, j)`` of each image."""
        def take(t: torch.Tensor) -> torch.Tensor:
            shaped = index.reshape(*index.shape, *([1] * (t.dim() - 2)))
            return torch.gather(t, 1, shaped.expand(*index.shape, *t.shape[2:]))

        return Gaussians(*(take(t) for t in (self.means, self.scales, self.quats, self.colors,
                                              self.opacities)))


def activate(raw: torch.Tensor, scale_factor: float = 1.0) -> Gaussians:
    """The authors' activations of ``(B, k, 14)`` outputs.

    Centres ``2 (sigmoid - 0.5)`` in (-1, 1)^3; scales ``c sigmoid`` (``c`` =
    ``scale_factor``), divided by the Gaussian's distance from the camera, so that the
    orthographic camera gives the footprint their perspective one gives (``f s / z``; the
    Jacobian's small off-axis terms left out); rotations by Shoemake's uniform map of three
    sigmoids (channel 9 unused, as theirs); colour and opacity sigmoids.
    """
    raw = raw.float()
    means = 2 * (torch.sigmoid(raw[..., 0:3]) - 0.5)
    # their centres are projected orthographically and their footprints perspectively
    # (focal / depth): dividing by the depth here keeps the footprint's pull on z
    scales = scale_factor * torch.sigmoid(raw[..., 3:6]) / (means[..., 2:3] + Z_OFFSET)
    u = torch.sigmoid(raw[..., 6:9])
    a, b = torch.sqrt(1 - u[..., 0]), torch.sqrt(u[..., 0])
    quats = torch.stack([a * torch.sin(2 * math.pi * u[..., 1]),
                         a * torch.cos(2 * math.pi * u[..., 1]),
                         b * torch.sin(2 * math.pi * u[..., 2]),
                         b * torch.cos(2 * math.pi * u[..., 2])], dim=-1)
    return Gaussians(means, scales, quats, torch.sigmoid(raw[..., 10:13]),
                     torch.sigmoid(raw[..., 13]))


def camera(height: int, width: int, device: torch.device | str = "cpu"
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed camera: ``(1, 4, 4)`` world-to-camera (8 units back along z) and ``(1, 3,
    3)`` intrinsics with a 90-degree horizontal field of view."""
    viewmat = torch.eye(4, device=device)
    viewmat[2, 3] = Z_OFFSET
    focal = 0.5 * width / math.tan(0.5 * FOV)
    K = torch.tensor([[focal, 0.0, width / 2], [0.0, focal, height / 2], [0.0, 0.0, 1.0]],
                     device=device)
    return viewmat[None], K[None]


def render(gaussians: Gaussians, height: int, width: int, backend: str = "auto",
           render_mode: str = "RGB") -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, C, H, W)`` renders on white (the authors' background) and ``(B, 1, H, W)``
    alphas, one image at a time, orthographic centres (the authors' projection)."""
    from fit3d_hub.render.backends import backend as pair
    from fit3d_hub.render.backends import resolve_backend

    rasterize = pair(resolve_backend(backend)).rasterization
    viewmat, K = camera(height, width, gaussians.means.device)
    images, alphas = [], []
    for i in range(len(gaussians.means)):
        rgb, alpha, _ = rasterize(
            gaussians.means[i].contiguous(), gaussians.quats[i].contiguous(),
            gaussians.scales[i].contiguous(), gaussians.opacities[i].contiguous(),
            gaussians.colors[i].contiguous(), viewmat, K, width, height,
            camera_model="ortho", render_mode=render_mode,
            backgrounds=None if render_mode != "RGB" else
            torch.ones(1, 3, device=viewmat.device))
        images.append(rgb[0].permute(2, 0, 1))
        alphas.append(alpha[0].permute(2, 0, 1))
    return torch.stack(images), torch.stack(alphas)


def depth_order(gaussians: Gaussians) -> torch.Tensor:
    """``(B, k)`` indices of each image's Gaussians, nearest to the camera first."""
    return torch.argsort(gaussians.means[..., 2], dim=1, stable=True)


def depth_layers(gaussians: Gaussians, height: int, width: int, layers: int = 4,
                 backend: str = "auto") -> list[torch.Tensor]:
    """The image built up from the nearest Gaussians back: layer ``j`` renders the nearest
    ``(j + 1) / layers`` of them (the authors' depth-limited renders), ``(B, 3, H, W)``
    each."""
    if layers < 1:
        raise ValueError(f"layers must be >= 1; got {layers}")
    order = depth_order(gaussians)
    k = order.shape[1]
    out = []
    for j in range(layers):
        count = max(1, round(k * (j + 1) / layers))
        out.append(render(gaussians.select(order[:, :count]), height, width, backend)[0])
    return out


def depth_maps(gaussians: Gaussians, height: int, width: int, backend: str = "auto"
               ) -> dict[str, torch.Tensor]:
    """Rendered depth (alpha-normalised, in the box's units, ``(B, 1, H, W)``), a
    figure-ground mask (pixels nearer than the image's median rendered depth) and an edge
    map (the depth's Sobel gradient magnitude, scaled to [0, 1] per image): the zero-shot
    outputs the paper reads from the Gaussians' depth (their code has none; these rules are
    ours)."""
    depth, alpha = render(gaussians, height, width, backend, render_mode="ED")
    depth = torch.where(alpha > 1e-3, depth - Z_OFFSET, torch.ones_like(depth))
    median = depth.flatten(1).median(dim=1).values.view(-1, 1, 1, 1)
    sobel = torch.tensor([[1.0, 0, -1], [2, 0, -2], [1, 0, -1]], device=depth.device)
    padded = F.pad(depth, (1, 1, 1, 1), mode="replicate")
    gx = F.conv2d(padded, sobel.view(1, 1, 3, 3))
    gy = F.conv2d(padded, sobel.t().contiguous().view(1, 1, 3, 3))
    edges = torch.sqrt(gx**2 + gy**2)
    edges = edges / edges.flatten(1).amax(dim=1).clamp_min(1e-8).view(-1, 1, 1, 1)
    return {"depth": depth, "alpha": alpha, "foreground": (depth < median).float(),
            "edges": edges}


def build_decoder(spec, encoder: nn.Module, *, where: str = "fit3d.gmae") -> nn.Module:
    """The decoder a repo's ``fit3d.gmae`` record describes, for ``encoder`` (random
    weights), sized on the meta device and checked against the memory budget first
    (``where`` names the record in errors)."""
    from fit3d_hub.backbone import state_bytes
    from fit3d_hub.budget import check_bytes

    patch = int(encoder.patch_embed.patch_size[0])
    grid = spec.image_size // patch

    def make() -> nn.Module:
        if spec.decoder == "gaussians":
            return GaussianDecoder(int(encoder.embed_dim), grid, spec.num_gaussians, spec.dim,
                                   spec.depth, spec.heads)
        return PixelDecoder(int(encoder.embed_dim), grid, patch, spec.dim, spec.depth,
                            spec.heads)

    with torch.device("meta"):
        check_bytes(state_bytes(make()), where, f"a {spec.decoder} decoder of these sizes")
    return make()


def encode_visible(vit: nn.Module, images: torch.Tensor, ids_keep: torch.Tensor
                   ) -> torch.Tensor:
    """``(B, 1 + kept, C)`` normed tokens of the visible patches (CLS first), MAE's way:
    position codes added before the patches are dropped."""
    x = vit.patch_embed(images)
    if x.dim() == 4:  # dynamic-size timm ViTs keep the grid
        x = x.flatten(1, 2)
    x = x + vit.pos_embed[:, 1:]
    x = torch.gather(x, 1, ids_keep[..., None].expand(-1, -1, x.shape[-1]))
    cls = (vit.cls_token + vit.pos_embed[:, :1]).expand(len(x), -1, -1)
    x = torch.cat([cls, x], dim=1)
    for block in vit.blocks:
        x = block(x)
    return vit.norm(x)


def image_gaussians(model, images: torch.Tensor) -> Gaussians:
    """The Gaussians of unmasked images: ``model`` a loaded GMAE repo
    (``fit3d_hub.load_fit3d(DIR)``), ``images`` ``(B, 3, S, S)`` normalised at the
    training size ``S`` (the decoder's position code is that grid's)."""
    spec, encoder, decoder = model.fit3d_block.gmae, model.finetuned, model.decoder
    if spec is None or spec.decoder != "gaussians" or decoder is None:
        raise ValueError("not a GMAE model with a Gaussian decoder (a fit3d.gmae repo "
                         "trained with --decoder gaussians)")
    side = spec.image_size
    if tuple(images.shape[-2:]) != (side, side):
        raise ValueError(f"images must be {side}x{side} (the training size); got "
                         f"{tuple(images.shape[-2:])}")
    patches = (side // int(encoder.patch_embed.patch_size[0])) ** 2
    ids = torch.arange(patches, device=images.device).expand(len(images), -1)
    raw = decoder(encode_visible(encoder, images, ids), ids)
    return activate(raw, spec.scale_factor)


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """``(B, 3, H, W)`` -> ``(B, L, p * p * 3)``, patches in raster order (MAE's layout)."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // patch, patch, w // patch, patch)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(b, (h // patch) * (w // patch),
                                                     patch * patch * c)


def random_masking(n: int, length: int, ratio: float, generator: torch.Generator,
                   device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MAE's per-sample random masking: ``ids_keep (n, kept)`` (the lowest-noise patches),
    ``mask (n, length)`` (1 = removed) and ``ids_restore (n, length)``."""
    keep = int(length * (1 - ratio))
    noise = torch.rand(n, length, generator=generator).to(device)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones(n, length, device=device)
    mask[:, :keep] = 0
    return ids_shuffle[:, :keep], torch.gather(mask, 1, ids_restore), ids_restore
