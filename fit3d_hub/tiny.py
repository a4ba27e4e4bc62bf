"""The tiny random backbone the demos and the feature explorer run offline with."""

from __future__ import annotations

import copy

import torch

from fit3d_hub.backbone import create_vit
from fit3d_hub.model import FiT3D

DEMO_BACKBONE = ("vit_small_patch8_224", {"embed_dim": 48, "depth": 2, "num_heads": 3,
                                          "img_size": 64})


def demo_backbone(seed: int) -> FiT3D:
    """A tiny patch-8 ViT with random weights and no position embedding, so its features
    describe what a patch shows rather than where it sits in the frame."""
    torch.manual_seed(seed)
    arch, args = DEMO_BACKBONE
    vit = create_vit(arch, args)
    with torch.no_grad():
        vit.pos_embed.zero_()
    return FiT3D(vit, copy.deepcopy(vit), mode="original")
