"""Readers of other authors' released files, each in its own layout, into our repo format.

- The multiview-equivariance authors (``qq456cvb/3DCorrEnhance``) release PyTorch-Lightning
  checkpoints holding only their LoRA (``w_a_000``.. / ``w_b_000``.., q then v of each of the
  last 4 blocks) and refine conv (``state_dict.refine_conv``); the base is the timm copy of
  the same weights. :func:`equivariance_repo` merges the LoRA once and keeps the result as a
  repo in a cache keyed by both files' content hashes, so later loads read safetensors only.
- Splat-and-Distill (``david-shavin/SnD``) releases whole DINOv2 state dicts, which the
  authors load into timm with ``strict=False``; :func:`read_dinov2_state_dict` converts
  torch.hub DINOv2 keys to timm's (timm's own ``checkpoint_filter_fn``) and loads strictly,
  so a missing or extra key is a one-line error rather than a silent random weight.

Every pickle is read with ``weights_only=True``.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from fit3d_hub.atomic import atomic_directory
from fit3d_hub.errors import CheckpointError
from fit3d_hub.weights import load_strict, read_pickle_object, read_state_dict

CACHE_ENV = "FIT3D_HUB_CACHE"
"""Where converted releases are kept (default: ``$HF_HOME/fit3d-hub``; with a ``cache_dir``,
inside it under ``.fit3d-hub``)."""


def read_equivariance_checkpoint(source: str | Path
                                 ) -> tuple[list[torch.Tensor], list[torch.Tensor],
                                            dict[str, torch.Tensor]]:
    """The adapters and refine conv of a 3DCorrEnhance release (``dinov2_base.ckpt``, ...).

    Their Lightning checkpoint (``finetune.py``'s ``on_save_checkpoint``) holds
    ``state_dict = {"refine_conv": {"weight", "bias"}}`` and top-level ``w_a_000``...,
    ``w_b_000``... (per adapted block, q then v), beside Lightning's own bookkeeping. It is
    read with ``weights_only=True``: nothing in it runs.
    """
    obj = read_pickle_object(source)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source}: expected a Lightning checkpoint (a dict); got "
                              f"{type(obj).__name__}")
    refine = obj.get("state_dict", {}).get("refine_conv") if isinstance(
        obj.get("state_dict"), Mapping) else None
    if not isinstance(refine, Mapping) or set(refine) != {"weight", "bias"}:
        raise CheckpointError(f"{source}: no 'state_dict.refine_conv' with weight and bias: "
                              "not a 3DCorrEnhance checkpoint")
    w_a = [obj[k] for k in sorted(k for k in obj if str(k).startswith("w_a_"))]
    w_b = [obj[k] for k in sorted(k for k in obj if str(k).startswith("w_b_"))]
    if not w_a or not all(isinstance(t, torch.Tensor) for t in (*w_a, *w_b)):
        raise CheckpointError(f"{source}: no 'w_a_000'... LoRA tensors: not a 3DCorrEnhance "
                              "checkpoint")
    return w_a, w_b, {k: v for k, v in refine.items()}


def equivariance_model(source: str | Path, release: tuple, original: nn.Module):
    """A :class:`~fit3d_hub.FiT3D`: ``original`` beside its copy with the release's LoRA
    merged, the release's refine conv on the fine-tuned branch (``release``: what
    :func:`read_equivariance_checkpoint` read from ``source``)."""
    from fit3d_hub.lora import merge_authors_lora
    from fit3d_hub.model import FiT3D
    from fit3d_hub.refine import refine_conv

    w_a, w_b, refine_state = release
    try:
        finetuned = merge_authors_lora(copy.deepcopy(original), w_a, w_b, str(source))
    except ValueError as err:
        raise CheckpointError(str(err)) from None
    refine = refine_conv(int(original.embed_dim))
    load_strict(refine, refine_state, f"{source} (state_dict.refine_conv)")
    return FiT3D(original, finetuned, refine=refine)


def converted_root(cache_dir: str | Path | None) -> Path:
    """The folder of converted releases (see :data:`CACHE_ENV`)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]) / "converted"
    if cache_dir is not None:
        return Path(cache_dir) / ".fit3d-hub" / "converted"
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "fit3d-hub" / "converted"


def _content_key(path: Path) -> str:
    """A downloaded file's content hash: the hub cache names each blob by it."""
    return Path(path).resolve().name[:16]


def equivariance_repo(spec, source: Path, base: Path, cache_dir: str | Path | None) -> Path:
    """The repo of an equivariance release, converted on first use and cached (keyed by the
    release's and the base's content hashes); the repo points at the base's hub file."""
    from fit3d_hub.backbone import load_vit
    from fit3d_hub.registry import registry_config

    target = converted_root(cache_dir) / spec.name / \
        f"{_content_key(source)}-{_content_key(base)}"
    if (target / "config.json").is_file():
        return target
    release = read_equivariance_checkpoint(source)  # a bad file fails before any merge
    block = registry_config(spec).fit3d
    original = load_vit(spec.base_model, spec.model_args, weights=base, drop_classifier=True,
                        mean=block.mean, std=block.std)
    model = equivariance_model(source, release, original)
    model.fit3d_block = replace(block, training={**block.training,
                                                 "converted_by": "fit3d-hub (load by name)"})
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_directory(target) as tmp:
        model.save_pretrained(tmp, include_base=False)
    return target


def read_dinov2_state_dict(path: Path, vit: nn.Module) -> dict[str, torch.Tensor]:
    """A released DINOv2 state dict (torch.hub's keys or timm's) as ``vit``'s state dict;
    what still does not fit is :class:`CheckpointError` when loaded strictly."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    state = read_state_dict(path)
    try:
        return checkpoint_filter_fn(dict(state), vit)
    except (KeyError, RuntimeError, ValueError) as err:
        raise CheckpointError(f"{path}: not a DINOv2 state dict ({err})") from None
