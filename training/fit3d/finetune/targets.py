"""Stage 2 samples: a view's image for the backbone and its rendered 3D-aware target."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fit3d_hub.render.backends import NEAR_PLANE, backend
from fit3d_hub.transforms import FiT3DTransform, resize_images
from training.fit3d.finetune.data import LiftedScene


@dataclass
class Sample:
    image: torch.Tensor  # (3, Hi, Wi) normalised backbone input, sides patch multiples
    target: torch.Tensor  # (C, h, w) decoded rendered features on the token grid
    mask: torch.Tensor  # (1, h, w) float weights: the scene mask on the token grid


@torch.no_grad()
def render_target(scene: LiftedScene, view: int, backend_name: str, device: torch.device
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoded features (C, H, W) and coverage alpha (1, H, W) of one view, at render size."""
    g = scene.gaussians
    geo = {k: v.to(device) for k, v in g.activated().items()}
    width, height = scene.render_size
    feats, alpha, _ = backend(backend_name).rasterization(
        geo["means"], geo["quats"], geo["scales"], geo["opacities"],
        g.splats["features"].to(device), scene.views.viewmats[view:view + 1].to(device),
        scene.views.Ks[view:view + 1].to(device), width, height, near_plane=NEAR_PLANE,
        packed=False, channel_chunk=max(32, g.splats["features"].shape[-1]))
    decoder = g.decoder.to(device)
    decoded = decoder(feats.permute(0, 3, 1, 2))[0]
    return decoded, alpha[0].permute(2, 0, 1)


def make_sample(scene: LiftedScene, view: int, flip: bool, transform: FiT3DTransform,
                backend_name: str, device: torch.device, coverage_mask: bool = False
                ) -> Sample:
    """The authors' Stage 2 sample: the stored image through the one preprocessing path, the
    features rendered at full render size and decoded, then (after the flip) both the target
    and the scene mask bilinearly resized to the token grid; the resized mask weights the L1.

    ``coverage_mask`` (ours, off by default) also drops tokens that the Gaussians do not
    fully cover (alpha > 0.5 on more than 99% of their pixels).
    """
    decoded, alpha = render_target(scene, view, backend_name, device)
    views = scene.views
    image = transform.batch(views.images[view:view + 1].permute(0, 3, 1, 2).to(device))[0]
    mask = (views.masks[view:view + 1].to(device).float() if views.masks is not None
            else torch.ones(1, *views.images.shape[1:3], device=device))
    if flip:
        image, decoded, mask, alpha = (t.flip(-1) for t in (image, decoded, mask, alpha))
    patch = transform.patch_size
    grid = (image.shape[-2] // patch, image.shape[-1] // patch)
    target = resize_images(decoded[None], grid)[0]
    weight = resize_images(mask[None], grid)[0]
    if coverage_mask:
        covered = F.interpolate((alpha > 0.5)[None].float(), size=grid, mode="area")[0] > 0.99
        weight = weight * covered
    return Sample(image, target, weight)


def masked_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``sum(|pred - target| * mask) / (sum(mask) * C)`` with (B, C, h, w) maps and (B, 1, h, w)
    weights: the authors' masked L1."""
    weight = mask.to(pred.dtype).expand_as(pred)
    return ((pred - target).abs() * weight).sum() / weight.sum().clamp_min(1.0)
