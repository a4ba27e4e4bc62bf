"""Turning the authors' released checkpoints into the repo format: FiT3D's ``.pth`` state
dicts and 3DCorrEnhance's Lightning ``.ckpt`` adapters."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from fit3d_hub.backbone import load_vit
from fit3d_hub.errors import RepoFormatError
from fit3d_hub.loading import load_fit3d
from fit3d_hub.model import FiT3D
from fit3d_hub.registry import REGISTRY, get_spec, registry_config
from fit3d_hub.releases import equivariance_model, read_equivariance_checkpoint
from fit3d_hub.schema import CONFIG_NAME


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


def convert_equivariance_checkpoint(source: str | Path, backbone: str, output: str | Path, *,
                                    base: str | Path | None = None, overwrite: bool = False,
                                    cache_dir: str | Path | None = None) -> Path:
    """Write ``output`` as an equivariance repo from the authors' release ``source``: their
    LoRA merged into the original weights, their refine conv beside.

    The original weights are ``base`` (a timm checkpoint, then embedded) or the registry
    entry's timm hub repo (through the hub cache; the repo points there).
    """
    spec = get_spec(backbone)
    # the release's own entry, where registered, knows its statistics (CLIP's for CLIP)
    spec = REGISTRY.get(f"{spec.base_name}.equivariance", spec)
    output = Path(output)
    if (output / CONFIG_NAME).exists() and not overwrite:
        raise RepoFormatError(f"{output}: already holds a repo (config.json); pass "
                              "--overwrite to replace it")
    release = read_equivariance_checkpoint(source)  # a bad file fails before the base loads
    block = registry_config(spec).fit3d
    if base is not None:
        original = load_vit(spec.base_model, spec.model_args, weights=Path(base),
                            drop_classifier=True, mean=block.mean, std=block.std)
    else:
        original = load_fit3d(spec.name, mode="original", cache_dir=cache_dir).original
    model = equivariance_model(source, release, original)
    model.fit3d_block = replace(block, method="equivariance", training={
        "origin": "3DCorrEnhance authors' release (You et al., ICLR 2025)",
        "source": Path(source).name, "converted_by": "fit3d-hub convert --method equivariance"})
    return model.save_pretrained(output, include_base=base is not None)
