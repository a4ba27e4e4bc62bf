"""The teacher: the backbone's last-block normed patch features, computed once per view."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from fit3d_hub import FiT3D, get_transform


def teacher_inputs(teacher: FiT3D, images: list[np.ndarray]) -> torch.Tensor:
    """The backbone input of a batch of same-size (H, W, 3) uint8 views (one path for all)."""
    batch = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)
    return get_transform(teacher).batch(batch)


@torch.inference_mode()
def compute_teacher_features(teacher: FiT3D, images: list[np.ndarray], *, batch_size: int = 8,
                             device: torch.device | str = "cpu") -> torch.Tensor:
    """(V, C, h, w) float16 features at patch resolution, on CPU: the per-scene cache.

    ``images`` are the views as stored, (H, W, 3) uint8 at file resolution (the authors feed
    the teacher the untouched image); the teacher runs its original branch.
    """
    out = []
    start = 0
    while start < len(images):
        # A batch holds consecutive views of one size (scenes may mix image sizes).
        shape = images[start].shape
        stop = start + 1
        while stop < min(len(images), start + batch_size) and images[stop].shape == shape:
            stop += 1
        x = teacher_inputs(teacher, images[start:stop]).to(device)
        out.append(teacher.forward_features(x).original.to("cpu", torch.float16))
        start = stop
    return torch.cat(out)


def upsample_teacher(features: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Teacher features (N, C, h, w) bilinearly upsampled to the render size, in float32."""
    return F.interpolate(features.float(), size=(height, width), mode="bilinear",
                         align_corners=False)
