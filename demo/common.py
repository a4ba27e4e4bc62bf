"""What every method's demo shares: the tiny random backbone that lets it run offline."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from fit3d_hub import FiT3D
from fit3d_hub.backbone import create_vit

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


def backbone_or_demo(backbone: str | None, output: Path, seed: int) -> str:
    """``backbone`` as given, or the tiny demo backbone saved as a repo under ``output``."""
    if backbone is not None:
        return backbone
    path = output / "backbone"
    demo_backbone(seed).save_pretrained(path, include_base=True)
    return str(path)
