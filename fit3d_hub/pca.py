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
    return pca_rgb_shared([features], quantile=quantile)[0]


def pca_rgb_shared(maps: Sequence[torch.Tensor], sizes: Sequence[tuple[int, int]] | None = None,
                   *, quantile: float = 0.01) -> list[np.ndarray]:
    """PCA pictures of several ``(C, h_i, w_i)`` maps in **one** basis: the components, their
    signs and their colour scaling come from all maps' tokens together, so equal colours mean
    equal features across the pictures (per-map PCA gives each picture its own colours).

    ``sizes`` (``(height, width)`` each): the projections are bilinearly upsampled to these
    (the image resolution; projecting is linear, so this equals projecting upsampled
    features). Returns ``(h, w, 3)`` uint8 arrays.
    """
    if not maps:
        return []
    for m in maps:
        if m.dim() != 3:
            raise ValueError(f"expected (C, h, w) feature maps; got {tuple(m.shape)}")
    if len({int(m.shape[0]) for m in maps}) != 1:
        raise ValueError("feature maps of different widths cannot share a basis")
    tokens = [m.detach().float().reshape(m.shape[0], -1).T for m in maps]
    x = torch.cat(tokens)
    mean = x.mean(dim=0, keepdim=True)
    _, _, vh = torch.linalg.svd(x - mean, full_matrices=False)
    comps = vh[:3]
    signs = torch.sign(comps.gather(1, comps.abs().argmax(dim=1, keepdim=True)))
    comps = comps * torch.where(signs == 0, torch.ones_like(signs), signs)
    projections = [(t - mean) @ comps.T for t in tokens]
    if comps.shape[0] < 3:
        projections = [torch.cat([p, p.new_zeros(p.shape[0], 3 - p.shape[1])], dim=1)
                       for p in projections]
    joint = torch.cat(projections)
    lo = torch.quantile(joint, quantile, dim=0)
    hi = torch.quantile(joint, 1 - quantile, dim=0)
    out = []
    for i, (m, proj) in enumerate(zip(maps, projections, strict=True)):
        h, w = m.shape[-2:]
        grid = proj.T.reshape(1, 3, h, w)
        if sizes is not None and tuple(sizes[i]) != (h, w):
            grid = torch.nn.functional.interpolate(grid, size=tuple(sizes[i]), mode="bilinear",
                                                   align_corners=False)
        scaled = ((grid[0].permute(1, 2, 0) - lo) / (hi - lo).clamp_min(1e-8)).clamp(0, 1)
        out.append((scaled.numpy() * 255).round().astype(np.uint8))
    return out


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


def stacked(rows: Sequence[Image.Image]) -> Image.Image:
    """Rows (e.g. from :func:`side_by_side`) one below the other on white, left-aligned."""
    canvas = Image.new("RGB", (max(r.width for r in rows), sum(r.height for r in rows)),
                       "white")
    y = 0
    for row in rows:
        canvas.paste(row, (0, y))
        y += row.height
    return canvas
