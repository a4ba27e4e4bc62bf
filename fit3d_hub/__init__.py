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
