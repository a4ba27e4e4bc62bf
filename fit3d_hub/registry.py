"""The backbone registry: plain data, one entry per released (or trainable) backbone.

Adding a backbone is adding one :class:`BackboneSpec` to ``REGISTRY``. Two other places name
the released ones, for what they alone carry: ``hubconf.py`` (torch.hub entry points under the
authors' names) and ``model_cards/backbones.json`` (the paper's figures per backbone); the
tests check that both agree with the registry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fit3d_hub.errors import UnknownModelError

AUTHORS_REPO = "yuanwenyue/FiT3D"
"""The hub repo holding the authors' released fine-tuned checkpoints (pickled timm state dicts)."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneSpec:
    """Everything needed to build and fetch one FiT3D backbone pair."""

    name: str
    base_model: str
    """timm model id with pretrained tag; its weights live in the hub repo ``timm/<base_model>``."""
    patch_size: int
    embed_dim: int
    license: str
    finetuned_repo: str | None = AUTHORS_REPO
    finetuned_file: str | None = None
    """File in ``finetuned_repo``; None when no fine-tuned weights were released."""
    display_name: str = ""
    mean: tuple[float, float, float] = IMAGENET_MEAN
    # The authors normalise every backbone (CLIP too) with ImageNet statistics in training
    # and evaluation, so the fine-tuned weights expect these, not timm's CLIP statistics.
    std: tuple[float, float, float] = IMAGENET_STD
    aliases: tuple[str, ...] = ()
    model_args: dict[str, Any] = field(default_factory=dict)
    """Extra timm constructor arguments (empty for the released backbones)."""

    @property
    def architecture(self) -> str:
        """timm architecture name (the model id without its pretrained tag)."""
        return self.base_model.split(".", 1)[0]

    @property
    def base_repo(self) -> str:
        """Hub repo of the original (base) weights, as timm publishes them."""
        return f"timm/{self.base_model}"

    @property
    def has_finetuned_weights(self) -> bool:
        return self.finetuned_repo is not None and self.finetuned_file is not None


def _released(name: str, base_model: str, patch: int, width: int, license: str, display: str,
              **extra) -> BackboneSpec:
    return BackboneSpec(
        name=name, base_model=base_model, patch_size=patch, embed_dim=width, license=license,
        finetuned_file=f"{name}_finetuned.pth", display_name=display,
        aliases=(f"{name}_fine",), **extra,
    )


REGISTRY: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        _released("dinov2_small", "vit_small_patch14_dinov2.lvd142m", 14, 384, "apache-2.0",
                  "DINOv2 ViT-S/14"),
        # Released later than the others (hubconf ``dinov2_base_fine``); the paper has no
        # DINOv2-B figures.
        _released("dinov2_base", "vit_base_patch14_dinov2.lvd142m", 14, 768, "apache-2.0",
                  "DINOv2 ViT-B/14"),
        _released("dinov2_reg_small", "vit_small_patch14_reg4_dinov2.lvd142m", 14, 384,
                  "apache-2.0", "DINOv2-reg ViT-S/14"),
        _released("clip_base", "vit_base_patch16_clip_384.laion2b_ft_in12k_in1k", 16, 768,
                  "apache-2.0", "CLIP ViT-B/16"),
        _released("mae_base", "vit_base_patch16_224.mae", 16, 768, "cc-by-nc-4.0", "MAE ViT-B/16"),
        _released("deit3_base", "deit3_base_patch16_224.fb_in1k", 16, 768, "apache-2.0",
                  "DeiT-III ViT-B/16"),
    )
}


def _alias_table() -> dict[str, str]:
    return {alias: spec.name for spec in REGISTRY.values() for alias in spec.aliases}


def list_models(pretrained: bool = False) -> list[str]:
    """Registry names, sorted; ``pretrained=True`` keeps those with released fine-tuned weights."""
    return sorted(n for n, s in REGISTRY.items() if not pretrained or s.has_finetuned_weights)


def is_registered(name: str) -> bool:
    return name in REGISTRY or name in _alias_table()


def get_spec(name: str) -> BackboneSpec:
    """Look up a registry name or alias; an unknown name raises :class:`UnknownModelError`."""
    canonical = _alias_table().get(name, name)
    if canonical not in REGISTRY:
        raise UnknownModelError(
            f"unknown backbone {name!r}: expected one of {', '.join(list_models())} "
            "(or a hub repo id / local directory)"
        )
    return REGISTRY[canonical]
