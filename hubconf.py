"""torch.hub entry points: the authors' names (``ywyue/FiT3D``'s hubconf) and ``fit3d``.

>>> vit = torch.hub.load("<this repo>", "dinov2_small_fine")   # the fine-tuned timm ViT
>>> model = torch.hub.load("<this repo>", "fit3d", name="dinov2_small")   # [original | fine-tuned]

Each ``*_fine`` entry returns what the authors' entry returns: the fine-tuned timm ViT
(``num_classes=0``, dynamic image size) with their released weights, read through the hub
cache like every fit3d_hub download. Keyword arguments go to :func:`fit3d_hub.load_fit3d`.
"""

dependencies = ["torch", "timm", "huggingface_hub", "safetensors"]

from fit3d_hub import load_fit3d as _load_fit3d  # noqa: E402


def _finetuned(name: str, **kwargs):
    return _load_fit3d(name, mode="finetuned", **kwargs).finetuned


def dinov2_small_fine(**kwargs):
    """FiT3D-fine-tuned DINOv2 ViT-S/14."""
    return _finetuned("dinov2_small.fit3d", **kwargs)


def dinov2_base_fine(**kwargs):
    """FiT3D-fine-tuned DINOv2 ViT-B/14."""
    return _finetuned("dinov2_base.fit3d", **kwargs)


def dinov2_reg_small_fine(**kwargs):
    """FiT3D-fine-tuned DINOv2 ViT-S/14 with 4 registers."""
    return _finetuned("dinov2_reg_small.fit3d", **kwargs)


def clip_base_fine(**kwargs):
    """FiT3D-fine-tuned CLIP ViT-B/16."""
    return _finetuned("clip_base.fit3d", **kwargs)


def mae_base_fine(**kwargs):
    """FiT3D-fine-tuned MAE ViT-B/16."""
    return _finetuned("mae_base.fit3d", **kwargs)


def deit3_base_fine(**kwargs):
    """FiT3D-fine-tuned DeiT III ViT-B/16."""
    return _finetuned("deit3_base.fit3d", **kwargs)


def fit3d(name: str = "dinov2_small", **kwargs):
    """The concatenating :class:`fit3d_hub.FiT3D` (``name``: registry name, hub repo or
    local folder; ``mode``, ``revision``, ... as :func:`fit3d_hub.load_fit3d`)."""
    return _load_fit3d(name, **kwargs)
