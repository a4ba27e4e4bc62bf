"""The preprocessing a FiT3D backbone expects: RGB, patch-multiple size, mean/std normalised."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from fit3d_hub.errors import InputShapeError, RepoFormatError


@dataclass(frozen=True)
class FiT3DTransform:
    """PIL image / HWC uint8 array / CHW tensor -> normalised ``(3, H, W)`` float tensor.

    ``size=None`` keeps the image's size, rounded down to multiples of the patch size (the
    authors' demo does the same); an ``int`` scales the shorter side to it first; an
    ``(H, W)`` pair resizes to exactly that (each must be a multiple of the patch size).
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    patch_size: int
    size: int | tuple[int, int] | None = None

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        p = self.patch_size
        if isinstance(self.size, Sequence):
            h, w = (int(v) for v in self.size)
            if h % p or w % p or h <= 0 or w <= 0:
                raise InputShapeError(f"size {h}x{w} must be positive multiples of the patch "
                                      f"size {p}")
            return h, w
        if self.size is not None:
            scale = self.size / min(height, width)
            height, width = round(height * scale), round(width * scale)
        return max(p, height // p * p), max(p, width // p * p)

    def __call__(self, image: Image.Image | np.ndarray | torch.Tensor) -> torch.Tensor:
        x = to_chw_float(image)
        h, w = self.output_size(*x.shape[-2:])
        if (h, w) != tuple(x.shape[-2:]):
            x = F.interpolate(x[None], size=(h, w), mode="bilinear", align_corners=False,
                              antialias=True)[0]
        mean = torch.tensor(self.mean, dtype=x.dtype).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype).view(3, 1, 1)
        return (x - mean) / std


def to_chw_float(image: Image.Image | np.ndarray | torch.Tensor) -> torch.Tensor:
    """An RGB image as a float ``(3, H, W)`` tensor in [0, 1]."""
    if isinstance(image, Image.Image):
        image = np.array(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise InputShapeError(f"expected an HxWx3 RGB array; got shape {image.shape}")
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    elif isinstance(image, torch.Tensor):
        if image.dim() != 3 or image.shape[0] != 3:
            raise InputShapeError(f"expected a (3, H, W) tensor; got {tuple(image.shape)}")
        x = image
    else:
        raise InputShapeError(f"expected a PIL image, numpy array or tensor; got "
                              f"{type(image).__name__}")
    return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()


def get_transform(name_or_model, size: int | tuple[int, int] | None = None) -> FiT3DTransform:
    """The preprocessing for a registry name, repo id, local directory or loaded :class:`FiT3D`.

    Only config.json is read for names and repos (no weights are downloaded).
    """
    from fit3d_hub.model import FiT3D

    if isinstance(name_or_model, FiT3D):
        meta = name_or_model.fit3d_config
        ref = name_or_model.finetuned or name_or_model.original
        mean = meta.get("mean") or ref.pretrained_cfg.get("mean")
        std = meta.get("std") or ref.pretrained_cfg.get("std")
        patch = name_or_model.patch_size
    else:
        from fit3d_hub.loading import resolve

        config = resolve(name_or_model, pretrained=False).config
        mean = config.fit3d.get("mean") or config.pretrained_cfg.get("mean")
        std = config.fit3d.get("std") or config.pretrained_cfg.get("std")
        patch = config.fit3d.get("patch_size")
        if not (mean and std and patch):
            raise RepoFormatError(f"{name_or_model}: config.json lacks fit3d mean, std or "
                                  "patch_size")
    return FiT3DTransform(tuple(mean), tuple(std), int(patch), size)
