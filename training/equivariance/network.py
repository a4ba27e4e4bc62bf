"""The trained network: a frozen ViT with q/v LoRA, its final normed patch tokens through
the refine conv; and the input size the authors feed it."""

from __future__ import annotations

import torch
from torch import nn

from fit3d_hub.model import block_features

TARGET_SIZE = 640
FEATURE_STRIDE = 8


def network_input_size(height: int, width: int, patch: int, target: int = TARGET_SIZE,
                       stride: int = FEATURE_STRIDE) -> tuple[int, int]:
    """(H, W) the image is resized to: its longer side scaled to ``target``, a token grid of
    ``side // stride``, each token ``patch`` pixels (3DCorrEnhance ``get_feature``: a 640 px
    side gives an 80-token grid, a 1120 px input for patch 14)."""
    if height > width:
        size = (target, int(width * target / height))
    else:
        size = (int(height * target / width), target)
    grid = (size[0] // stride, size[1] // stride)
    if min(grid) < 1:
        raise ValueError(f"a {width}x{height} image at target size {target} and feature stride "
                         f"{stride} leaves no token; raise --target-size")
    return grid[0] * patch, grid[1] * patch


class EquivarianceNet(nn.Module):
    """``(B, 3, H, W)`` normalised images -> ``(B, C, H/p, W/p)`` refined patch features.

    The refine conv reads the last block's normed patch tokens (the authors'
    ``x_norm_patchtokens``), CLS and register tokens left out.
    """

    def __init__(self, vit: nn.Module, refine: nn.Module):
        super().__init__()
        self.vit = vit
        self.refine = refine

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.refine(block_features(self.vit, x)[0])
