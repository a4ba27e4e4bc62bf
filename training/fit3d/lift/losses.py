"""Stage 1 losses and image metrics (pure functions on NCHW tensors)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gaussian_kernel(size: int, sigma: float, like: torch.Tensor) -> torch.Tensor:
    """The normalised 1D Gaussian whose outer product with itself is 3DGS's SSIM window."""
    coords = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Per-pixel SSIM map (N, C, H, W) of images in [0, 1]: 3DGS's ``loss_utils.ssim`` (an
    11x11 Gaussian window, sigma 1.5, zero-padded "same" convolution).

    The window is applied as two 1D passes over the five moments stacked into one grouped
    convolution: the same sums as the 2D window up to float rounding (<= 1e-5 per value),
    4 to 20x faster on CPU at Stage 1's sizes (``benchmarks/ssim.py``).
    """
    c = x.shape[1]
    g = gaussian_kernel(window, sigma, x)
    pad = window // 2
    moments = torch.cat([x, y, x * x, y * y, x * y], dim=1)
    rows = g.view(1, 1, 1, window).expand(5 * c, 1, 1, window)
    cols = g.view(1, 1, window, 1).expand(5 * c, 1, window, 1)
    blurred = F.conv2d(F.conv2d(moments, rows, padding=(0, pad), groups=5 * c), cols,
                       padding=(pad, 0), groups=5 * c)
    mu_x, mu_y, exx, eyy, exy = blurred.split(c, dim=1)
    sxx, syy, sxy = exx - mu_x**2, eyy - mu_y**2, exy - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    return ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))


def masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``values`` (N, C, H, W) over pixels where ``mask`` (N, 1, H, W) is true."""
    if mask is None:
        return values.mean()
    weight = mask.to(values.dtype).expand_as(values)
    return (values * weight).sum() / weight.sum().clamp_min(1.0)


def fill_masked(target: torch.Tensor, render: torch.Tensor,
                mask: torch.Tensor | None) -> torch.Tensor:
    """The target with masked-out pixels (``mask`` false) replaced by the detached render.

    The authors' handling of ScanNet++'s anonymisation masks: those pixels then add zero to
    every loss, while the means still run over all pixels and SSIM windows see a
    seamless image.
    """
    if mask is None:
        return target
    return torch.where(mask, target, render.detach())


def rgb_loss(render: torch.Tensor, target: torch.Tensor, ssim_weight: float = 0.2
             ) -> torch.Tensor:
    """``(1 - w) L1 + w (1 - SSIM)`` on RGB (w = 0.2 as in 3DGS)."""
    l1 = (render - target).abs().mean()
    dssim = 1 - ssim(render, target).mean()
    return (1 - ssim_weight) * l1 + ssim_weight * dssim


def feature_loss(decoded: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """L1 between decoded features and the teacher's, both (N, C, H, W)."""
    return (decoded - teacher).abs().mean()


def psnr(render: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    mse = masked_mean((render - target) ** 2, mask).clamp_min(1e-10)
    return float(-10 * torch.log10(mse))
