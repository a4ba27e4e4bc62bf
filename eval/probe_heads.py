"""Linear probe heads and losses of the DINOv2 protocol, as the FiT3D authors configure them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SIGLOSS_EPS = 1e-3  # inside the logs, as the depth toolbox has it


class SegmentationHead(nn.Module):
    """BatchNorm + 1x1 conv on the patch features; logits upsampled to the label size."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)
        self.conv = nn.Conv2d(channels, num_classes, 1)
        nn.init.normal_(self.conv.weight, std=0.01)  # mmseg's conv_seg initialisation
        nn.init.zeros_(self.conv.bias)

    def forward(self, feats: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        logits = self.conv(self.bn(feats))
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


class DepthHead(nn.Module):
    """The authors' depth ``BNHead`` (which has no BatchNorm): the CLS token concatenated to
    every patch feature, upsampled ``upsample`` x, a 1x1 conv to 256 bins spread uniformly
    over the depth range, linear normalisation (ReLU + 0.1, divided by the sum), depth = the
    expected bin centre, clamped to the range at test time and upsampled to ``size``."""

    def __init__(self, channels: int, cls_channels: int, min_depth: float, max_depth: float,
                 bins: int = 256, upsample: int = 4):
        super().__init__()
        self.upsample = upsample
        self.min_depth, self.max_depth = min_depth, max_depth
        self.conv = nn.Conv2d(channels + cls_channels, bins, 1)
        self.register_buffer("centres", torch.linspace(min_depth, max_depth, bins))

    def forward(self, feats: torch.Tensor, cls: torch.Tensor, size: tuple[int, int]
                ) -> torch.Tensor:
        x = torch.cat([feats, cls[:, :, None, None].expand(-1, -1, *feats.shape[-2:])], dim=1)
        x = F.interpolate(x, scale_factor=self.upsample, mode="bilinear", align_corners=False)
        weights = torch.relu(self.conv(x)) + 0.1
        weights = weights / weights.sum(dim=1, keepdim=True)
        depth = torch.einsum("bkhw,k->bhw", weights, self.centres)[:, None]
        if not self.training:
            depth = depth.clamp(self.min_depth, self.max_depth)
        return F.interpolate(depth, size=size, mode="bilinear", align_corners=False)[:, 0]


def cross_entropy(logits: torch.Tensor, label: torch.Tensor, ignore: int = 255) -> torch.Tensor:
    """mmseg's CrossEntropyLoss (``avg_non_ignore=False``): ignored pixels add zero but count
    in the mean over all pixels."""
    return F.cross_entropy(logits, label, ignore_index=ignore, reduction="sum") / label.numel()


def grouped_sig_loss(pred: torch.Tensor, gt: torch.Tensor, group: int, warm_up: bool = False
                     ) -> torch.Tensor:
    """SigLoss over consecutive groups of ``group`` images, averaged (each GPU's share)."""
    parts = [sig_loss(pred[i:i + group], gt[i:i + group], warm_up)
             for i in range(0, len(pred), group)]
    return torch.stack(parts).mean()


def sig_loss(pred: torch.Tensor, gt: torch.Tensor, warm_up: bool = False) -> torch.Tensor:
    """The toolbox's SigLoss over pixels with ground truth (gt > 0), g = log pred - log gt:
    ``sqrt(var(g) + 0.15 mean(g)^2)``, or ``sqrt(0.15 mean(g)^2)`` during its warm-up."""
    valid = gt > 0
    g = torch.log(pred[valid] + SIGLOSS_EPS) - torch.log(gt[valid] + SIGLOSS_EPS)
    if g.numel() < 2:
        return pred.sum() * 0
    if warm_up:
        return torch.sqrt(0.15 * g.mean() ** 2)
    return torch.sqrt(torch.var(g) + 0.15 * g.mean() ** 2)


def gradient_loss(pred: torch.Tensor, gt: torch.Tensor, scales: int = 4) -> torch.Tensor:
    """Multi-scale gradient matching of the log-depth difference (MegaDepth's), per image
    (B, H, W): at strides 1, 2, 4, 6, the L1 of differences two pixels apart where both
    have ground truth, over the number of valid pixels, summed over the scales.

    The authors' configs weight it 0.5, but the toolbox applies it to (B, 1, H, W) tensors,
    where it slices the batch and channel axes and is identically zero at their 2 images per
    GPU; the paper protocol therefore weights it 0 (see docs/faithfulness.md)."""
    total = pred.sum() * 0
    for stride in [1] + [2 * i for i in range(1, scales)]:
        p, t = pred[:, ::stride, ::stride], gt[:, ::stride, ::stride]
        mask = (t > 0).to(p.dtype)
        n = mask.sum()
        if n == 0:
            continue
        diff = (torch.log(p + SIGLOSS_EPS) - torch.log(t + SIGLOSS_EPS)) * mask
        v = (diff[:, :-2] - diff[:, 2:]).abs() * mask[:, :-2] * mask[:, 2:]
        h = (diff[:, :, :-2] - diff[:, :, 2:]).abs() * mask[:, :, :-2] * mask[:, :, 2:]
        total = total + (v.sum() + h.sum()) / n
    return total
