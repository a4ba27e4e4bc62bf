"""Linear probe heads and losses of the DINOv2 protocol."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SegmentationHead(nn.Module):
    """BatchNorm + 1x1 conv on the patch features; logits upsampled to the label size."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)
        self.conv = nn.Conv2d(channels, num_classes, 1)

    def forward(self, feats: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        logits = self.conv(self.bn(feats))
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


class DepthHead(nn.Module):
    """CLS token concatenated to every patch feature, BatchNorm + 1x1 conv to 256 bins
    spread uniformly over the depth range, linear normalisation (ReLU + 0.1, divided by the
    sum), depth = expected bin centre; upsampled to the label size."""

    def __init__(self, channels: int, cls_channels: int, min_depth: float, max_depth: float,
                 bins: int = 256):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels + cls_channels)
        self.conv = nn.Conv2d(channels + cls_channels, bins, 1)
        self.register_buffer("centres", torch.linspace(min_depth, max_depth, bins))

    def forward(self, feats: torch.Tensor, cls: torch.Tensor, size: tuple[int, int]
                ) -> torch.Tensor:
        x = torch.cat([feats, cls[:, :, None, None].expand(-1, -1, *feats.shape[-2:])], dim=1)
        weights = torch.relu(self.conv(self.bn(x))) + 0.1
        weights = weights / weights.sum(dim=1, keepdim=True)
        depth = torch.einsum("bkhw,k->bhw", weights, self.centres)[:, None]
        return F.interpolate(depth, size=size, mode="bilinear", align_corners=False)[:, 0]


def sig_loss(pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor,
             lam: float = 0.85) -> torch.Tensor:
    """Scale-invariant log loss: sqrt(mean(g^2) - lam * mean(g)^2), g = log pred - log gt."""
    g = torch.log(pred[valid].clamp_min(1e-6)) - torch.log(gt[valid])
    if g.numel() == 0:
        return pred.sum() * 0
    return torch.sqrt((g**2).mean() - lam * g.mean() ** 2 + 1e-8)


def gradient_loss(pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor,
                  scales: int = 3) -> torch.Tensor:
    """Multi-scale L1 on the spatial gradients of the log-depth difference (valid pairs)."""
    diff = torch.log(pred.clamp_min(1e-6)) - torch.log(gt.clamp_min(1e-6))
    total = pred.sum() * 0
    for s in range(scales):
        step = 2**s
        d, v = diff[:, ::step, ::step], valid[:, ::step, ::step]
        for dx, dy in ((1, 0), (0, 1)):
            a, b = d[:, dy:, dx:], d[:, : d.shape[1] - dy, : d.shape[2] - dx]
            m = v[:, dy:, dx:] & v[:, : v.shape[1] - dy, : v.shape[2] - dx]
            if m.any():
                total = total + (a - b)[m].abs().mean()
    return total / scales
