"""One rasterizer interface over two backends: gsplat (CUDA) and the PyTorch reference."""

from __future__ import annotations

import torch

from training.lifting.torch_rasterizer import rasterize_torch

BACKENDS = ("auto", "gsplat", "torch")
NEAR_PLANE = 0.2
"""Gaussians closer to the camera are culled: 3DGS's ``in_frustum`` (z <= 0.2), which the
authors' rasterizer keeps (gsplat's own default is 0.01)."""


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
        raise ValueError(f"--backend must be one of {', '.join(BACKENDS)}; got {name!r}")
    if name == "auto":
        return "gsplat" if gsplat_available() else "torch"
    if name == "gsplat" and not gsplat_available():
        raise ValueError("--backend gsplat needs CUDA and the gsplat package "
                         "(pip install -e '.[train]'); use --backend torch on CPU")
    return name


def rasterize(backend: str, means: torch.Tensor, quats: torch.Tensor, scales: torch.Tensor,
              opacities: torch.Tensor, colors: torch.Tensor, viewmats: torch.Tensor,
              Ks: torch.Tensor, width: int, height: int,
              sh_degree: int | None = None) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Render (C, H, W, D) colours/features and (C, H, W, 1) alphas, plus gsplat-style info.

    Inputs follow ``gsplat.rasterization``: activated scales and opacities, unnormalised
    quaternions (w, x, y, z), OpenCV world-to-camera ``viewmats``.
    """
    if backend == "torch":
        return rasterize_torch(means, quats, scales, opacities, colors, viewmats, Ks, width,
                               height, sh_degree=sh_degree, near_plane=NEAR_PLANE)
    if backend == "gsplat":
        from gsplat import rasterization

        channels = colors.shape[-1]
        return rasterization(
            means, quats, scales, opacities, colors, viewmats, Ks, width, height,
            sh_degree=sh_degree, packed=False, near_plane=NEAR_PLANE,
            # one launch for all feature channels (gsplat's default chunk is 32)
            channel_chunk=max(32, channels),
        )
    raise ValueError(f"unknown rasterizer backend {backend!r}")


def rasterize_rgb_and_features(backend: str, means: torch.Tensor, quats: torch.Tensor,
                               scales: torch.Tensor, opacities: torch.Tensor,
                               sh_coeffs: torch.Tensor, features: torch.Tensor,
                               viewmats: torch.Tensor, Ks: torch.Tensor,
                               width: int, height: int, sh_degree: int
                               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    """RGB with trainable geometry, and features rendered on the *detached* geometry.

    FiT3D's gradient separation: the RGB render is the only path from the losses to means,
    quats, scales and opacities; the feature render reaches only the features. Returns
    (rgb (C, H, W, 3), alpha (C, H, W, 1), features (C, H, W, D), info of the RGB render).
    """
    if backend == "torch":
        rgb, alpha, info = rasterize_torch(means, quats, scales, opacities, sh_coeffs, viewmats,
                                           Ks, width, height, sh_degree=sh_degree,
                                           near_plane=NEAR_PLANE, detached_features=features)
        return rgb, alpha, info.pop("features"), info
    rgb, alpha, info = rasterize(backend, means, quats, scales, opacities, sh_coeffs, viewmats,
                                 Ks, width, height, sh_degree=sh_degree)
    feats, _, _ = rasterize(backend, means.detach(), quats.detach(), scales.detach(),
                            opacities.detach(), features, viewmats, Ks, width, height)
    return rgb, alpha, feats, info
