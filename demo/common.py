"""What every method's demo shares: the tiny random backbone that lets it run offline."""

from __future__ import annotations

from pathlib import Path

from fit3d_hub.tiny import DEMO_BACKBONE, demo_backbone

__all__ = ["DEMO_BACKBONE", "backbone_or_demo", "demo_backbone"]

def backbone_or_demo(backbone: str | None, output: Path, seed: int) -> str:
    """``backbone`` as given, or the tiny demo backbone saved as a repo under ``output``."""
    if backbone is not None:
        return backbone
    path = output / "backbone"
    demo_backbone(seed).save_pretrained(path, include_base=True)
    return str(path)
