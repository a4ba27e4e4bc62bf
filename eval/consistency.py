"""Multi-view consistency of dense features: do pixels that see the same 3D point agree?

Pure functions over ground-truth correspondences (``scenes.correspondence``). A feature map
covers its whole image, so a pixel's feature is sampled bilinearly at its relative position.
"""

from __future__ import annotations

import torch

from fit3d_hub.sampling import sample_features
from scenes.correspondence import Correspondences


def consistency(features_a: torch.Tensor, features_b: torch.Tensor, matches: Correspondences,
                width: int, height: int, *, seed: int = 0) -> dict[str, float]:
    """Cosine distance of corresponding features, relative to non-corresponding ones.

    ``ratio`` = mean distance of true matches / mean distance of random pairs (both
    visible); lower is more consistent, and features that collapse to one vector do not
    score well (their random pairs are as close as their matches).
    """
    if len(matches.uv_a) < 2:
        raise ValueError("fewer than two correspondences between the views")
    fa = sample_features(features_a.float(), matches.uv_a, width, height)
    fb = sample_features(features_b.float(), matches.uv_b, width, height)
    matched = (1 - (fa * fb).sum(-1)).mean()
    perm = torch.randperm(len(fb), generator=torch.Generator().manual_seed(seed))
    shuffled = (1 - (fa * fb[perm]).sum(-1)).mean()
    return {"matched": float(matched), "random": float(shuffled),
            "ratio": float(matched / shuffled.clamp_min(1e-8)), "pairs": float(len(fa))}
