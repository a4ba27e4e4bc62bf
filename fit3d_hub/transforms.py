"""The preprocessing a FiT3D backbone expects, as one batched path used everywhere.

RGB in [0, 1], each side rounded *down* to a multiple of the patch size (bilinear, no
antialiasing: the authors' rule in Stage 1, Stage 2 and their demo), then normalised with the
backbone's mean and std. The Stage 1 teacher, Stage 2, the probes, the correspondence
benchmark and :func:`get_transform` all call :func:`preprocess_images`, so a view is turned
into the same tensor wherever it is fed to a backbone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from fit3d_hub.errors import InputShapeError, RepoFormatError

Stats = tuple[float, float, float]


def patch_floor(height: int, width: int, patch: int) -> tuple[int, int]:
    """Each side rounded down to a multiple of ``patch`` (at least one patch)."""
    return max(patch, height // patch * patch), max(patch, width // patch * patch)


def _stats(values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(values, dtype=like.dtype, device=like.device).view(3, 1, 1)


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(x - mean) / std`` per channel of ``(..., 3, H, W)`` images in [0, 1]."""
    return (x - _stats(mean, x)) / _stats(std, x)


def denormalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Inverse of :func:`normalize`."""
    return x * _stats(std, x) + _stats(mean, x)


def as_float_images(images: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` uint8 or float images -> float32 in [0, 1]."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise InputShapeError(f"expected images as a (B, 3, H, W) tensor; got "
                              f"{tuple(images.shape)}")
    return images.float() / 255.0 if images.dtype == torch.uint8 else images.float()


def resize_images(images: torch.Tensor, size: tuple[int, int], *,
                  antialias: bool = False) -> torch.Tensor:
    """Bilinear resize (half-pixel centres) of ``(B, C, H, W)``; a no-op at the same size."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=size, mode="bilinear", align_corners=False,
                         antialias=antialias)


def preprocess_images(images: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                      patch: int, size: tuple[int, int] | None = None) -> torch.Tensor:
    """``(B, 3, H, W)`` uint8 or [0, 1] images -> normalised backbone input.

    ``size=None`` keeps the image, its sides rounded down to patch multiples; a given
    ``size`` (patch multiples) is resized to, antialiased where it shrinks the image.
    """
    x = as_float_images(images)
    height, width = x.shape[-2:]
    if size is None:
        size, antialias = patch_floor(height, width, patch), False
    else:
        antialias = size[0] < height or size[1] < width
    return normalize(resize_images(x, tuple(size), antialias=antialias), mean, std)


@dataclass(frozen=True)
class FiT3DTransform:
    """PIL image / HWC uint8 array / CHW tensor -> normalised ``(3, H, W)`` float tensor.

    ``size=None`` keeps the image's size, rounded down to multiples of the patch size (as
    the authors do); an ``int`` scales the shorter side to it first; an ``(H, W)`` pair
    resizes to exactly that (each must be a multiple of the patch size).
    """

    mean: Stats
    std: Stats
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
        return patch_floor(height, width, p)

    def __call__(self, image: Image.Image | np.ndarray | torch.Tensor) -> torch.Tensor:
        x = to_chw_float(image)
        size = None if self.size is None else self.output_size(*x.shape[-2:])
        return preprocess_images(x[None], self.mean, self.std, self.patch_size, size)[0]

    def batch(self, images: torch.Tensor) -> torch.Tensor:
        """The same for a ``(B, 3, H, W)`` uint8 or [0, 1] batch of one size."""
        size = None if self.size is None else self.output_size(*images.shape[-2:])
        return preprocess_images(images, self.mean, self.std, self.patch_size, size)

    def invert(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised input back to RGB in [0, 1] (for pictures)."""
        return denormalize(x, self.mean, self.std).clamp(0, 1)


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


def get_transform(name_or_model: Any, size: int | tuple[int, int] | None = None, *,
                  revision: str | None = None, cache_dir: str | Path | None = None,
                  local_files_only: bool | None = None) -> FiT3DTransform:
    """The preprocessing for a registry name, repo id, local directory or loaded :class:`FiT3D`.

    Only config.json is read for names and repos (no weights are downloaded); ``revision``,
    ``cache_dir`` and ``local_files_only`` as in :func:`fit3d_hub.load_fit3d`.
    """
    # imported here: the preprocessing above must not pull in timm or the hub client
    from fit3d_hub.loading import resolve
    from fit3d_hub.model import FiT3D

    if isinstance(name_or_model, FiT3D):
        mean, std = name_or_model.normalization
        patch = name_or_model.patch_size
    else:
        config = resolve(name_or_model, pretrained=False, revision=revision,
                         cache_dir=cache_dir, local_files_only=local_files_only).config
        mean = config.fit3d.mean or config.pretrained_cfg.get("mean")
        std = config.fit3d.std or config.pretrained_cfg.get("std")
        patch = config.fit3d.patch_size
        if not (mean and std and patch):
            raise RepoFormatError(f"{name_or_model}: config.json lacks fit3d mean, std or "
                                  "patch_size")
    return FiT3DTransform(tuple(mean), tuple(std), int(patch), size)
