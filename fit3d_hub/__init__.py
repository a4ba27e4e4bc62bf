"""fit3d-hub: 3D-aware vision backbones as a plug-in.

>>> import fit3d_hub
>>> model = fit3d_hub.load_fit3d("dinov2_small")      # original + 3D-aware fine-tuned ViT
>>> feats = model(images)                               # (B, 2C, H/p, W/p)

``import fit3d_hub`` is light: the public names below load their modules (torch, timm, the
hub client) on first use. With transformers installed, FiT3D repos become loadable by its
auto classes as soon as transformers is imported too (before or after this package), with no
remote code: :mod:`fit3d_hub.hf_transformers` registers them.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from typing import TYPE_CHECKING, Any

from fit3d_hub.errors import (
    BudgetError,
    CheckpointError,
    FiT3DError,
    HubFileNotFoundError,
    InputShapeError,
    NotCachedError,
    RepoFormatError,
    RepoWeightsError,
    UnknownModelError,
    UnsafeCheckpointError,
    UsageError,
)
from fit3d_hub.version import __version__

if TYPE_CHECKING:
    from fit3d_hub.loading import load_fit3d
    from fit3d_hub.methods import METHODS, MethodSpec
    from fit3d_hub.model import FiT3D, FiT3DFeatures
    from fit3d_hub.registry import REGISTRY, BackboneSpec, list_models
    from fit3d_hub.transforms import FiT3DTransform, get_transform

_LAZY = {
    "load_fit3d": "fit3d_hub.loading",
    "FiT3D": "fit3d_hub.model",
    "FiT3DFeatures": "fit3d_hub.model",
    "REGISTRY": "fit3d_hub.registry",
    "BackboneSpec": "fit3d_hub.registry",
    "list_models": "fit3d_hub.registry",
    "METHODS": "fit3d_hub.methods",
    "MethodSpec": "fit3d_hub.methods",
    "FiT3DTransform": "fit3d_hub.transforms",
    "get_transform": "fit3d_hub.transforms",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fit3d_hub' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


def _register_with_transformers() -> None:
    """Register FiT3D with transformers' auto classes; a transformers release whose API moved
    is a warning, not a failure of this package."""
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _AfterTransformers)]
    try:
        import fit3d_hub.hf_transformers  # noqa: F401  (registers on import)
    except Exception as err:
        import warnings

        warnings.warn(f"fit3d_hub: could not register FiT3D with transformers "
                      f"({type(err).__name__}: {err}); AutoModel and friends will not know "
                      "FiT3D repos", stacklevel=2)


class _AfterTransformers(importlib.abc.MetaPathFinder):
    """Runs :func:`_register_with_transformers` right after ``transformers`` is imported, so
    that importing this package does not import transformers (seconds) for users who never
    do."""

    _looking = False

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != "transformers" or self._looking:
            return None
        self._looking = True  # let the other finders find the real module
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._looking = False
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        run = loader.exec_module

        def exec_module(module: Any) -> None:
            run(module)
            _register_with_transformers()

        loader.exec_module = exec_module
        return spec


if "transformers" in sys.modules:
    _register_with_transformers()
elif importlib.util.find_spec("transformers") is not None:
    sys.meta_path.insert(0, _AfterTransformers())

__all__ = [
    "METHODS",
    "REGISTRY",
    "BackboneSpec",
    "BudgetError",
    "CheckpointError",
    "FiT3D",
    "FiT3DError",
    "FiT3DFeatures",
    "FiT3DTransform",
    "HubFileNotFoundError",
    "InputShapeError",
    "MethodSpec",
    "NotCachedError",
    "RepoFormatError",
    "RepoWeightsError",
    "UnknownModelError",
    "UnsafeCheckpointError",
    "UsageError",
    "__version__",
    "get_transform",
    "list_models",
    "load_fit3d",
]
