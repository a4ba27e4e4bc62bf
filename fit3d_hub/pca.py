"""PCA pictures of feature maps: the picture users look at to compare original and fine-tuned."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw


def pca_rgb(features: torch.Tensor, *, quantile: float = 0.01) -> np.ndarray:
    """First three principal components of a ``(C, h, w)`` feature map as ``(h, w, 3)`` uint8.

    Each component is scaled between its ``quantile`` and ``1 - quantile`` values, and its
    sign is fixed (largest loading positive) so the colours are deterministic.
    """
    if features.dim() != 3:
        raise ValueError(f"expected a (C, h, w) feature map; got {tuple(features.shape)}")
    c, h, w = features.shape
    x = features.detach().float().reshape(c, h * w).T
    x = x - x.mean(dim=0, keepdim=True)
    _, _, vh = torch.linalg.svd(x, full_matrices=False)
    comps = vh[:3]
    signs = torch.sign(comps.gather(1, comps.abs().argmax(dim=1, keepdim=True)))
    comps = comps * torch.where(signs == 0, torch.ones_like(signs), signs)
    proj = x @ comps.T
    if proj.shape[1] < 3:
        proj = torch.cat([proj, proj.new_zeros(proj.shape[0], 3 - proj.shape[1])], dim=1)
    lo = torch.quantile(proj, quantile, dim=0)
    hi = torch.quantile(proj, 1 - quantile, dim=0)
    scaled = ((proj - lo) / (hi - lo).clamp_min(1e-8)).clamp(0, 1)
    return (scaled.reshape(h, w, 3).numpy() * 255).round().astype(np.uint8)


def side_by_side(panels: Sequence[tuple[str, np.ndarray]], height: int = 256) -> Image.Image:
    """Panels (title, HxWx3 uint8) scaled to one height, laid out left to right with titles."""
    strip = 18
    images = []
    for _, arr in panels:
        img = Image.fromarray(arr)
        width = max(1, round(img.width * height / img.height))
        resample = Image.NEAREST if img.height < height else Image.BILINEAR
        images.append(img.resize((width, height), resample))
    total = sum(i.width for i in images) + 4 * (len(images) - 1)
    canvas = Image.new("RGB", (total, height + strip), "white")
    draw = ImageDraw.Draw(canvas)
    x = 0
    for (title, _), img in zip(panels, images, strict=True):
        canvas.paste(img, (x, strip))
        draw.text((x + 3, 3), title, fill="black")
        x += img.width + 4
    return canvas
