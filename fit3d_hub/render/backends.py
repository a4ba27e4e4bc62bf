"""The rasterizer backends behind one contract: gsplat's ``rasterization``.

Each backend is a pair: ``rasterization`` (gsplat's arguments and return tuple) and
``rasterization_with_features`` (RGB with trainable geometry plus per-Gaussian features
blended on the detached geometry: FiT3D's gradient separation). gsplat (CUDA) renders the
two with two calls; the PyTorch backend shares one projection and sort.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from fit3d_hub.errors import UsageError
from fit3d_hub.render import torch_rasterizer

BACKENDS = ("auto", "gsplat", "torch")
NEAR_PLANE = 0.2
"""Gaussians closer to the camera are culled: 3DGS's ``in_frustum`` (z <= 0.2), which the
authors' rasterizer keeps (gsplat's own default is 0.01)."""


class Backend(NamedTuple):
    rasterization: Callable
    rasterization_with_features: Callable


def gsplat_available() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        import gsplat  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(name: str) -> str:
    """``auto`` -> ``gsplat`` when CUDA and gsplat are there, else ``torch``."""
    if name not in BACKENDS:
        raise UsageError(f"--backend must be one of {', '.join(BACKENDS)}; got {name!r}")
    if name == "auto":
        return "gsplat" if gsplat_available() else "torch"
    if name == "gsplat" and not gsplat_available():
        raise UsageError("--backend gsplat needs CUDA and the gsplat package "
                         "(pip install -e '.[train]'); use --backend torch on CPU")
    return name


def _gsplat_rasterization(*args, **kwargs):
    from gsplat import rasterization

    return rasterization(*args, **kwargs)


def _gsplat_with_features(means: torch.Tensor, quats: torch.Tensor, scales: torch.Tensor,
                          opacities: torch.Tensor, colors: torch.Tensor,
                          features: torch.Tensor, viewmats: torch.Tensor, Ks: torch.Tensor,
                          width: int, height: int, **kwargs):
    """Two gsplat calls: RGB on the trainable geometry, features on the detached one."""
    rgb, alpha, meta = _gsplat_rasterization(means, quats, scales, opacities, colors, viewmats,
                                             Ks, width, height, **kwargs)
    plain = {k: v for k, v in kwargs.items() if k != "sh_degree"}
    # one launch for all feature channels (gsplat's default chunk is 32)
    plain["channel_chunk"] = max(32, features.shape[-1])
    feats, _, _ = _gsplat_rasterization(means.detach(), quats.detach(), scales.detach(),
                                        opacities.detach(), features, viewmats, Ks, width,
                                        height, **plain)
    return rgb, alpha, feats, meta


PAIRS = {
    "torch": Backend(torch_rasterizer.rasterization,
                     torch_rasterizer.rasterization_with_features),
    "gsplat": Backend(_gsplat_rasterization, _gsplat_with_features),
}


def backend(name: str) -> Backend:
    """The (rasterization, rasterization_with_features) pair of a resolved backend name."""
    if name not in PAIRS:
        raise ValueError(f"unknown rasterizer backend {name!r}")
    return PAIRS[name]
