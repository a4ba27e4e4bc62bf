"""Gaussian rendering behind one contract, gsplat's ``rasterization``, for every method.

``backends`` names the backends and gives each one's pair (``rasterization``,
``rasterization_with_features``); ``torch_rasterizer`` and ``compositing`` are the PyTorch
backend (any device, no gsplat needed), ``sh`` the spherical harmonics both use, and
``strategy`` gsplat's densification with its opacity reset repaired (needs gsplat). This
package imports no method; it ships in the wheel, so a published model can render at
inference time without gsplat.
"""

from fit3d_hub.render.backends import (
    BACKENDS,
    NEAR_PLANE,
    Backend,
    backend,
    gsplat_available,
    resolve_backend,
)

__all__ = ["BACKENDS", "NEAR_PLANE", "Backend", "backend", "gsplat_available", "resolve_backend"]
