"""The trained GMAE network: a timm ViT encoder that sees only the visible patches, and the
Gaussian (or, for the baseline, MAE's pixel) decoder; the losses."""

from __future__ import annotations

import torch
from torch import nn

from fit3d_hub.gmae import (
    GaussianDecoder,
    activate,
    encode_visible,
    patchify,
    random_masking,
    render,
    sincos_pos_embed,
)
from fit3d_hub.transforms import denormalize


def fix_position_embedding(vit: nn.Module) -> None:
    """MAE's fixed 2D sine-cosine position embedding in the timm ViT (not trained)."""
    grid = vit.patch_embed.grid_size
    if grid[0] != grid[1]:
        raise ValueError(f"GMAE trains on square images; this encoder's grid is {grid}")
    with torch.no_grad():
        vit.pos_embed.copy_(sincos_pos_embed(vit.embed_dim, grid[0]))
    vit.pos_embed.requires_grad_(False)


class GMAE(nn.Module):
    """``(B, 3, S, S)`` normalised images -> the masked-patch loss, the reconstruction and
    the mask. ``decoder`` is ``"gaussians"`` (GMAE) or ``"pixels"`` (MAE, the baseline)."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, *, mask_ratio: float,
                 scale_factor: float, mean, std, backend: str = "auto"):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.mask_ratio = mask_ratio
        self.scale_factor = scale_factor
        self.mean, self.std = tuple(mean), tuple(std)
        self.backend = backend
        self.patch = int(encoder.patch_embed.patch_size[0])

    @property
    def gaussian(self) -> bool:
        return isinstance(self.decoder, GaussianDecoder)

    def forward(self, images: torch.Tensor, generator: torch.Generator
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        length = (images.shape[-2] // self.patch) * (images.shape[-1] // self.patch)
        ids_keep, mask, ids_restore = random_masking(len(images), length, self.mask_ratio,
                                                     generator, images.device)
        tokens = encode_visible(self.encoder, images, ids_keep)
        target = denormalize(images, self.mean, self.std)  # the loss is on [0, 1] RGB
        if self.gaussian:
            raw = self.decoder(tokens, ids_keep)
            with torch.autocast(images.device.type, enabled=False):  # splat in fp32
                rendered, _ = render(activate(raw, self.scale_factor), *images.shape[-2:],
                                     self.backend)
            loss = gaussian_loss(rendered, target, mask, self.patch)
            return loss, rendered, mask
        pred = self.decoder(tokens, ids_restore)
        return pixel_loss(pred, target, mask, self.patch), pred, mask


def gaussian_loss(rendered: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                  patch: int) -> torch.Tensor:
    """The authors' GMAE loss: per-patch MSE of the render against the raw [0, 1] image,
    averaged over the masked patches of the batch."""
    per_patch = (patchify(rendered, patch) - patchify(target, patch)).square().mean(-1)
    return (per_patch * mask).sum() / mask.sum()


def pixel_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, patch: int
               ) -> torch.Tensor:
    """MAE's loss with ``norm_pix_loss``: each target patch normalised by its own mean and
    variance, MSE averaged over the masked patches."""
    patches = patchify(target, patch)
    mean = patches.mean(-1, keepdim=True)
    var = patches.var(-1, keepdim=True)
    patches = (patches - mean) / (var + 1e-6) ** 0.5
    per_patch = (pred - patches).square().mean(-1)
    return (per_patch * mask).sum() / mask.sum()
