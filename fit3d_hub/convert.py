"""Turning the authors' released checkpoints into the repo format: FiT3D's ``.pth`` state
dicts and 3DCorrEnhance's Lightning ``.ckpt`` adapters."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import torch

from fit3d_hub.backbone import load_vit
from fit3d_hub.errors import CheckpointError, RepoFormatError
from fit3d_hub.loading import load_fit3d, registry_config
from fit3d_hub.lora import merge_authors_lora
from fit3d_hub.model import FiT3D
from fit3d_hub.refine import refine_conv
from fit3d_hub.registry import get_spec
from fit3d_hub.schema import CONFIG_NAME
from fit3d_hub.weights import load_strict, read_pickle_object


def convert_checkpoint(source: str | Path, backbone: str, output: str | Path, *,
                       base: str | Path | None = None, overwrite: bool = False) -> Path:
    """Write ``output`` as a repo holding the fine-tuned weights of ``source``.

    ``source`` is read with ``torch.load(weights_only=True)`` (or as safetensors) and must
    match the registry ``backbone``'s architecture exactly. With ``base`` (a timm
    checkpoint of the original backbone) the repo embeds it and is self-contained; without,
    config.json points at the timm hub repo of the original weights.
    """
    spec = get_spec(backbone)
    output = Path(output)
    if (output / CONFIG_NAME).exists() and not overwrite:
        raise RepoFormatError(f"{output}: already holds a repo (config.json); pass "
                              "--overwrite to replace it")
    block = registry_config(spec).fit3d
    finetuned = load_vit(spec.base_model, spec.model_args, weights=Path(source),
                         mean=block.mean, std=block.std)
    original = None
    if base is not None:
        original = load_vit(spec.base_model, spec.model_args, weights=Path(base),
                            drop_classifier=True, mean=block.mean, std=block.std)
    model = FiT3D(original, finetuned, mode="concat" if original is not None else "finetuned")
    model.fit3d_block = replace(block, training={"release": "authors",
                                                 "source": Path(source).name,
                                                 "converted_by": "fit3d-hub convert"})
    return model.save_pretrained(output, include_base=original is not None)


def read_equivariance_checkpoint(source: str | Path
                                 ) -> tuple[list[torch.Tensor], list[torch.Tensor],
                                            dict[str, torch.Tensor]]:
    """The adapters and refine conv of a 3DCorrEnhance release (``dinov2_base.ckpt``, ...).

    Their PyTorch-Lightning checkpoint (``finetune.py``'s ``on_save_checkpoint``) holds
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


def convert_equivariance_checkpoint(source: str | Path, backbone: str, output: str | Path, *,
                                    base: str | Path | None = None, overwrite: bool = False,
                                    cache_dir: str | Path | None = None) -> Path:
    """Write ``output`` as an equivariance repo from the authors' release ``source``: their
    LoRA merged into the original weights, their refine conv beside.

    The original weights are ``base`` (a timm checkpoint, then embedded) or the registry
    entry's timm hub repo (through the hub cache; the repo points there).
    """
    spec = get_spec(backbone)
    output = Path(output)
    if (output / CONFIG_NAME).exists() and not overwrite:
        raise RepoFormatError(f"{output}: already holds a repo (config.json); pass "
                              "--overwrite to replace it")
    w_a, w_b, refine_state = read_equivariance_checkpoint(source)
    block = registry_config(spec).fit3d
    if base is not None:
        original = load_vit(spec.base_model, spec.model_args, weights=Path(base),
                            drop_classifier=True, mean=block.mean, std=block.std)
    else:
        original = load_fit3d(spec.name, mode="original", cache_dir=cache_dir).original
    try:
        finetuned = merge_authors_lora(copy.deepcopy(original), w_a, w_b, str(source))
    except ValueError as err:
        raise CheckpointError(str(err)) from None
    refine = refine_conv(int(original.embed_dim))
    load_strict(refine, refine_state, f"{source} (state_dict.refine_conv)")
    model = FiT3D(original, finetuned, refine=refine)
    model.fit3d_block = replace(block, method="equivariance", training={
        "origin": "3DCorrEnhance authors' release (You et al., ICLR 2025)",
        "source": Path(source).name, "converted_by": "fit3d-hub convert --method equivariance"})
    return model.save_pretrained(output, include_base=base is not None)
