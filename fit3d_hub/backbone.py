"""Building the timm ViTs that FiT3D pairs up (weights are loaded elsewhere)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import timm
from torch import nn

from fit3d_hub.errors import UnknownModelError
from fit3d_hub.weights import drop_prefixes, load_strict, read_state_dict


def create_vit(architecture: str, model_args: Mapping[str, Any] | None = None,
               pretrained_cfg: Mapping[str, Any] | None = None) -> nn.Module:
    """A randomly initialised timm ViT without classifier, accepting any patch-multiple size.

    ``architecture`` is a timm name, with or without pretrained tag. Weights are never
    downloaded here: loading goes through :mod:`fit3d_hub.hub` so cache, revision and
    offline mode are honoured in one place.
    """
    args = dict(model_args or {})
    args.pop("pretrained", None)
    args["num_classes"] = 0
    args["dynamic_img_size"] = True
    if pretrained_cfg is not None:
        args["pretrained_cfg"] = dict(pretrained_cfg)
    if not timm.is_model(architecture.split(".", 1)[0]):
        raise UnknownModelError(f"unknown timm architecture {architecture!r}")
    try:
        model = timm.create_model(architecture, pretrained=False, **args)
    except TypeError as err:
        raise UnknownModelError(f"timm cannot build {architecture!r} with model_args "
                                f"{sorted(args)}: {err}") from None
    if not all(hasattr(model, a) for a in ("patch_embed", "num_prefix_tokens", "forward_features")):
        raise UnknownModelError(f"{architecture!r} is not a timm Vision Transformer "
                                "(FiT3D needs patch tokens)")
    return model.eval()


def classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    """Names of the classifier modules in a timm pretrained checkpoint (dropped: num_classes=0)."""
    classifier = model.pretrained_cfg.get("classifier", "head")
    return tuple(classifier) if isinstance(classifier, (list, tuple)) else (classifier,)


def load_vit(architecture: str, model_args: Mapping[str, Any] | None = None,
             pretrained_cfg: Mapping[str, Any] | None = None, weights: Path | None = None, *,
             drop_classifier: bool = False, mean: Sequence[float] | None = None,
             std: Sequence[float] | None = None,
             convert: Callable[[Path, nn.Module], dict] | None = None) -> nn.Module:
    """The one way to build a backbone from weights: :func:`create_vit`, then ``weights``
    (safetensors, or a pickle read with ``weights_only=True``) loaded strictly.

    ``drop_classifier`` for timm hub checkpoints, which carry a classification head.
    ``mean``/``std`` go into timm's ``pretrained_cfg``, so its data config of the branch
    names the statistics the weights expect. ``convert(weights, vit)`` reads a file in
    another layout into ``vit``'s keys (:mod:`fit3d_hub.releases`).
    """
    vit = create_vit(architecture, model_args, pretrained_cfg)
    if weights is not None:
        state = convert(weights, vit) if convert is not None else read_state_dict(weights)
        if drop_classifier:
            state = drop_prefixes(state, classifier_prefixes(vit))
        load_strict(vit, state, str(weights))
    stats = {k: tuple(v) for k, v in (("mean", mean), ("std", std)) if v}
    if stats:
        vit.pretrained_cfg = {**vit.pretrained_cfg, **stats}
    return vit.eval()
