"""Building the timm ViTs that FiT3D pairs up (weights are loaded elsewhere)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from fit3d_hub.budget import check_bytes
from fit3d_hub.errors import RepoFormatError, UnknownModelError
from fit3d_hub.weights import (
    check_shapes,
    drop_prefixes,
    load_strict,
    read_header,
    read_state_dict,
)

MAX_DEPTH = 256
"""Most blocks a config may declare (the largest released ViTs have 48): building the
skeleton of a deeper one would itself take minutes."""
_INT_ARGS = ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "reg_tokens",
             "in_chans")
_NUMERIC_ARGS = (*_INT_ARGS, "mlp_ratio", "init_values")


def _checked_args(architecture: str, model_args: Mapping[str, Any] | None,
                  pretrained_cfg: Mapping[str, Any] | None, where: str) -> dict[str, Any]:
    """timm's keyword arguments, with the values a config file could make hostile checked:
    sizes are numbers (a string ``mlp_ratio`` would be repeated, not multiplied)."""
    if not isinstance(architecture, str) or not architecture:
        raise UnknownModelError(f"{where}: 'architecture' must be a timm model name")
    args = dict(model_args or {})
    for key in _NUMERIC_ARGS:
        value = args.get(key)
        values = value if isinstance(value, (list, tuple)) else [value]
        kinds = int if key in _INT_ARGS else (int, float)
        if value is not None and (not values or len(values) > 3 or not all(
                isinstance(v, kinds) and not isinstance(v, bool) for v in values)):
            raise RepoFormatError(f"{where}: field 'model_args.{key}' must be "
                                  f"{'an int' if kinds is int else 'a number'} (or a pair); "
                                  f"got {value!r}")
    depth = args.get("depth", 0)
    if isinstance(depth, (int, float)) and depth > MAX_DEPTH:
        raise RepoFormatError(f"{where}: field 'model_args.depth' is {depth}; at most "
                              f"{MAX_DEPTH} blocks are supported")
    width = args.get("embed_dim", 0)
    if isinstance(width, (int, float)) and isinstance(depth, (int, float)):
        # A lower bound of the weights (attention and MLP matrices), before any building.
        check_bytes(4 * 12 * float(width) ** 2 * max(float(depth), 1), where,
                    f"{architecture!r} with embed_dim {width} and depth {depth}")
    args.pop("pretrained", None)
    args["num_classes"] = 0
    args["dynamic_img_size"] = True
    if pretrained_cfg is not None:
        args["pretrained_cfg"] = dict(pretrained_cfg)
    if not timm.is_model(architecture.split(".", 1)[0]):
        raise UnknownModelError(f"{where}: unknown timm architecture {architecture!r}")
    return args


def vit_skeleton(architecture: str, model_args: Mapping[str, Any] | None = None,
                 pretrained_cfg: Mapping[str, Any] | None = None, *,
                 where: str = "model_args") -> nn.Module:
    """The ViT on PyTorch's meta device: every shape, no memory. What timm cannot build
    from ``model_args`` (an unknown norm layer, a zero patch size, heads that do not divide
    the width) is one :class:`RepoFormatError` naming ``where``."""
    return _skeleton(architecture, _checked_args(architecture, model_args, pretrained_cfg,
                                                 where), where)


def _skeleton(architecture: str, args: dict[str, Any], where: str) -> nn.Module:
    """:func:`vit_skeleton` from arguments :func:`_checked_args` has checked."""
    try:
        key = json.dumps([architecture, args], sort_keys=True)
    except (TypeError, ValueError):
        key = None
    if key is not None and key in _SKELETONS:
        return _SKELETONS[key]
    try:
        with torch.device("meta"):
            model = timm.create_model(architecture, pretrained=False, **args)
    except Exception as err:  # any failure of timm on these args is bad data
        first = str(err).splitlines()[0][:200] if str(err) else ""
        raise RepoFormatError(f"{where}: timm cannot build {architecture!r} from these "
                              f"model_args ({type(err).__name__}: {first})") from None
    if not all(hasattr(model, a) for a in ("patch_embed", "num_prefix_tokens",
                                           "forward_features")):
        raise UnknownModelError(f"{architecture!r} is not a timm Vision Transformer "
                                "(FiT3D needs patch tokens)")
    if key is not None:
        if len(_SKELETONS) >= 16:
            _SKELETONS.pop(next(iter(_SKELETONS)))
        _SKELETONS[key] = model
    return model


_SKELETONS: dict[str, nn.Module] = {}
"""Recent skeletons by their arguments: a load checks and then builds the same one."""


def state_bytes(module: nn.Module) -> int:
    """Bytes of ``module``'s state dict (works on the meta device)."""
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def state_shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def create_vit(architecture: str, model_args: Mapping[str, Any] | None = None,
               pretrained_cfg: Mapping[str, Any] | None = None, *,
               where: str = "model_args") -> nn.Module:
    """A randomly initialised timm ViT without classifier, accepting any patch-multiple size.

    ``architecture`` is a timm name, with or without pretrained tag. Weights are never
    downloaded here: loading goes through :mod:`fit3d_hub.hub` so cache, revision and
    offline mode are honoured in one place. The model is sized on the meta device first and
    refused (:class:`~fit3d_hub.budget.BudgetError`) when over the memory budget.
    """
    args = _checked_args(architecture, model_args, pretrained_cfg, where)
    check_bytes(state_bytes(_skeleton(architecture, args, where)), where,
                f"{architecture!r} with these model_args")
    return timm.create_model(architecture, pretrained=False, **args).eval()


def classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    """Names of the classifier modules in a timm pretrained checkpoint (dropped: num_classes=0)."""
    classifier = model.pretrained_cfg.get("classifier", "head")
    return tuple(classifier) if isinstance(classifier, (list, tuple)) else (classifier,)


def load_vit(architecture: str, model_args: Mapping[str, Any] | None = None,
             pretrained_cfg: Mapping[str, Any] | None = None, weights: Path | None = None, *,
             drop_classifier: bool = False, mean: Sequence[float] | None = None,
             std: Sequence[float] | None = None,
             convert: Callable[[Path, nn.Module], dict] | None = None,
             where: str | None = None) -> nn.Module:
    """The one way to build a backbone from weights: :func:`create_vit`, then ``weights``
    (safetensors, or a pickle read with ``weights_only=True``) loaded strictly.

    ``drop_classifier`` for timm hub checkpoints, which carry a classification head.
    ``mean``/``std`` go into timm's ``pretrained_cfg``, so its data config of the branch
    names the statistics the weights expect. ``convert(weights, vit)`` reads a file in
    another layout into ``vit``'s keys (:mod:`fit3d_hub.releases`). A safetensors file whose
    header disagrees with the architecture is refused before the model is built; ``where``
    (the config file) names the source of ``model_args`` in errors.
    """
    where = where or str(weights or "model_args")
    if weights is not None and convert is None and Path(weights).suffix == ".safetensors":
        # The file's header against the config's shapes, before anything is allocated.
        skeleton = vit_skeleton(architecture, model_args, pretrained_cfg, where=where)
        found, _ = read_header(weights)
        if drop_classifier:
            found = drop_prefixes(found, classifier_prefixes(skeleton))
        check_shapes(state_shapes(skeleton), found, str(weights))
    vit = create_vit(architecture, model_args, pretrained_cfg, where=where)
    if weights is not None:
        state = convert(weights, vit) if convert is not None else read_state_dict(weights)
        if drop_classifier:
            state = drop_prefixes(state, classifier_prefixes(vit))
        load_strict(vit, state, str(weights))
    stats = {k: tuple(v) for k, v in (("mean", mean), ("std", std)) if v}
    if stats:
        vit.pretrained_cfg = {**vit.pretrained_cfg, **stats}
    return vit.eval()
