"""Stage 2 samples: a view's image for the backbone and its rendered 3D-aware target."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from training.finetuning.data import LiftedScene
from training.lifting.rasterize import rasterize
from training.lifting.teacher import teacher_input_size


@dataclass
class Sample:
    image: torch.Tensor  # (3, Hi, Wi) float in [0, 1], sides multiples of the patch size
    target: torch.Tensor  # (C, h, w) decoded rendered features on the token grid
    mask: torch.Tensor  # (1, h, w) bool: pixels the Gaussians cover (and the scene mask keeps)


@torch.no_grad()
def render_target(scene: LiftedScene, view: int, backend: str, device: torch.device
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoded features (C, H, W) and coverage alpha (1, H, W) of one view, at render size."""
    g = scene.gaussians
    geo = {k: v.to(device) for k, v in g.activated().items()}
    width, height = scene.size
    feats, alpha, _ = rasterize(
        backend, geo["means"], geo["quats"], geo["scales"], geo["opacities"],
        g.splats["features"].to(device), scene.viewmats[view:view + 1].to(device),
        scene.Ks[view:view + 1].to(device), width, height)
    decoder = g.decoder.to(device)
    decoded = decoder(feats.permute(0, 3, 1, 2))[0]
    return decoded, alpha[0].permute(2, 0, 1)


def make_sample(scene: LiftedScene, view: int, flip: bool, patch: int, backend: str,
                device: torch.device) -> Sample:
    """The backbone input (resized to patch multiples) and its target on the token grid."""
    decoded, alpha = render_target(scene, view, backend, device)
    width, height = scene.size
    hi, wi = teacher_input_size(height, width, patch)
    image = scene.images[view].to(device).permute(2, 0, 1).float() / 255.0
    if (hi, wi) != (height, width):
        image = F.interpolate(image[None], size=(hi, wi), mode="bilinear", align_corners=False,
                              antialias=True)[0]
    grid = (hi // patch, wi // patch)
    target = F.interpolate(decoded[None], size=grid, mode="bilinear", align_corners=False,
                           antialias=True)[0]
    covered = alpha > 0.5
    if scene.masks is not None:
        covered &= scene.masks[view].to(device)[None]
    # A token counts only where (nearly) all of its pixels are covered.
    mask = F.interpolate(covered[None].float(), size=grid, mode="area")[0] > 0.99
    if flip:
        image, target, mask = image.flip(-1), target.flip(-1), mask.flip(-1)
    return Sample(image, target, mask)


def masked_l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean |pred - target| over masked tokens; (B, C, h, w) with a (B, 1, h, w) mask."""
    weight = mask.to(pred.dtype).expand_as(pred)
    return ((pred - target).abs() * weight).sum() / weight.sum().clamp_min(1.0)
