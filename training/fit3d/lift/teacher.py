"""The teacher: the backbone's last-block normed patch features, computed once per view."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fit3d_hub import FiT3D, get_transform


def teacher_inputs(teacher: FiT3D, images: torch.Tensor) -> torch.Tensor:
    """The backbone input of (B, H, W, 3) uint8 views (the one preprocessing path)."""
    return get_transform(teacher).batch(images.permute(0, 3, 1, 2))


@torch.inference_mode()
def compute_teacher_features(teacher: FiT3D, images: torch.Tensor, *, batch_size: int = 8,
                             device: torch.device | str = "cpu") -> torch.Tensor:
    """(V, C, h, w) float16 features at patch resolution, on CPU: the per-scene cache.

    ``images`` are the views as training sees them, (V, H, W, 3) uint8 (the authors feed the
    teacher the stored image); the teacher runs its original branch.
    """
    return torch.cat([
        teacher.forward_features(teacher_inputs(teacher, images[i:i + batch_size]).to(device))
        .original.to("cpu", torch.float16)
        for i in range(0, len(images), batch_size)])


def upsample_teacher(features: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Teacher features (N, C, h, w) bilinearly upsampled to the render size, in float32."""
    return F.interpolate(features.float(), size=(height, width), mode="bilinear",
                         align_corners=False)
