"""fit3d-hub: 3D-aware vision backbones (FiT3D, ECCV 2024) as a plug-in.

>>> import fit3d_hub
>>> model = fit3d_hub.load_fit3d("dinov2_small")      # original + 3D-aware fine-tuned ViT
>>> feats = model(images)                               # (B, 2C, H/p, W/p)
"""

from fit3d_hub.errors import (
    CheckpointError,
    FiT3DError,
    HubFileNotFoundError,
    InputShapeError,
    NotCachedError,
    RepoFormatError,
    UnknownModelError,
    UnsafeCheckpointError,
)
from fit3d_hub.loading import load_fit3d
from fit3d_hub.model import FiT3D, FiT3DFeatures
from fit3d_hub.registry import REGISTRY, BackboneSpec, list_models
from fit3d_hub.transforms import FiT3DTransform, get_transform
from fit3d_hub.version import __version__


def _register_with_transformers() -> None:
    """Make FiT3D repos loadable by transformers' auto classes, with no remote code, whenever
    transformers is installed (``pip install "fit3d-hub[transformers]"``)."""
    import importlib.util

    if importlib.util.find_spec("transformers") is None:
        return
    try:
        import fit3d_hub.hf_transformers  # noqa: F401  (registers on import)
    except Exception as err:  # a transformers release whose API moved: fit3d_hub still works
        import warnings

        warnings.warn(f"fit3d_hub: could not register FiT3D with transformers "
                      f"({type(err).__name__}: {err}); AutoModel and friends will not know "
                      "FiT3D repos", stacklevel=2)


_register_with_transformers()

__all__ = [
    "REGISTRY",
    "BackboneSpec",
    "CheckpointError",
    "FiT3D",
    "FiT3DError",
    "FiT3DFeatures",
    "FiT3DTransform",
    "HubFileNotFoundError",
    "InputShapeError",
    "NotCachedError",
    "RepoFormatError",
    "UnknownModelError",
    "UnsafeCheckpointError",
    "__version__",
    "get_transform",
    "list_models",
    "load_fit3d",
]
