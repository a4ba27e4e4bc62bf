"""The refine convolution of the equivariance method: built, read and written here."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from fit3d_hub.budget import check_bytes
from fit3d_hub.schema import RefineSpec
from fit3d_hub.weights import load_strict, read_state_dict, save_state_dict


def refine_conv(channels: int, kernel_size: int = 3, *,
                where: str = "fit3d.refine.kernel_size") -> nn.Conv2d:
    """``Conv2d(C, C, k, padding=k // 2)`` with bias and PyTorch's default initialisation
    (the authors': no identity start, no residual). Its size is checked against the memory
    budget first: ``kernel_size`` comes from config.json (``where`` names it in errors)."""
    check_bytes(4 * channels * (channels * kernel_size**2 + 1), where,
                f"a {kernel_size}x{kernel_size} refine conv of {channels} channels")
    return nn.Conv2d(channels, channels, kernel_size, stride=1, padding=kernel_size // 2)


def spec_of(conv: nn.Conv2d) -> RefineSpec:
    """The ``fit3d.refine`` record of ``conv``."""
    kernel = conv.kernel_size[0] if isinstance(conv.kernel_size, tuple) else conv.kernel_size
    return RefineSpec(kernel_size=int(kernel))


def load_refine(path: str | Path, spec: RefineSpec, channels: int) -> nn.Conv2d:
    """The conv ``spec`` describes, with the weights in ``path`` loaded strictly."""
    conv = refine_conv(channels, spec.kernel_size)
    load_strict(conv, read_state_dict(Path(path)), str(path))
    return conv.eval()


def save_refine(conv: nn.Module, path: str | Path) -> Path:
    """Write ``conv``'s weights (``weight``, ``bias``) as safetensors, atomically."""
    save_state_dict(conv.state_dict(), Path(path), metadata={"format": "pt", "fit3d": "refine"})
    return Path(path)
