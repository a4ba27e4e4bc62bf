"""The teacher: the backbone's last-block normed patch features, computed once per view."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from fit3d_hub import FiT3D, get_transform


def teacher_input_size(height: int, width: int, patch: int) -> tuple[int, int]:
    """The image size fed to the teacher: each side rounded to the nearest patch multiple."""
    return max(patch, round(height / patch) * patch), max(patch, round(width / patch) * patch)


@torch.inference_mode()
def compute_teacher_features(teacher: FiT3D, images: list[np.ndarray], *, batch_size: int = 8,
                             device: torch.device | str = "cpu") -> torch.Tensor:
    """(V, C, h, w) float16 features at patch resolution, on CPU: the per-scene cache.

    ``images`` are (H, W, 3) float arrays in [0, 1]; the teacher runs its original branch.
    """
    transform = get_transform(teacher)
    mean = torch.tensor(transform.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(transform.std, device=device).view(1, 3, 1, 1)
    out = []
    for start in range(0, len(images), batch_size):
        chunk = torch.from_numpy(np.stack(images[start:start + batch_size])).to(device)
        x = chunk.permute(0, 3, 1, 2).float()
        size = teacher_input_size(x.shape[2], x.shape[3], teacher.patch_size)
        if size != tuple(x.shape[2:]):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        feats = teacher.forward_features((x - mean) / std).original
        out.append(feats.to("cpu", torch.float16))
    return torch.cat(out)


def upsample_teacher(features: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Teacher features (N, C, h, w) bilinearly upsampled to the render size, in float32."""
    return F.interpolate(features.float(), size=(height, width), mode="bilinear",
                         align_corners=False)
