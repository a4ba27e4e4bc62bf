"""Features at pixel positions: how the evaluation and the equivariance training read a map."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def sample_features(features: torch.Tensor, uv: np.ndarray | torch.Tensor, width: int,
                    height: int, *, normalize: bool = True) -> torch.Tensor:
    """Bilinear features ``(N, C)`` of a ``(C, h, w)`` map at pixel positions ``uv`` (N, 2)
    of the ``width`` x ``height`` image the map covers (pixel centres at ``i + 0.5``).

    With a map on the patch grid, position ``u`` reads token ``u / p - 0.5``: token centres
    sit at ``p * k + p / 2``, the authors' ``interpolate_features`` alignment. Points beyond
    the outer token centres take the border value. Differentiable in ``features``.
    """
    uv = torch.as_tensor(uv, device=features.device, dtype=features.dtype)
    scale = torch.tensor([2.0 / width, 2.0 / height], device=features.device,
                         dtype=features.dtype)
    grid = uv * scale - 1
    sampled = F.grid_sample(features[None], grid[None, :, None], mode="bilinear",
                            padding_mode="border", align_corners=False)[0, :, :, 0].T
    return F.normalize(sampled, dim=-1) if normalize else sampled
