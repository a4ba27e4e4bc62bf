"""Writing and validating repos in the format :mod:`fit3d_hub.schema` describes.

The same layout serves a local directory and a hub model repo, so ``timm.create_model
("hf-hub:<repo>")`` still loads the fine-tuned backbone alone from it.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from torch import nn

from fit3d_hub.atomic import write_text_atomic
from fit3d_hub.cards import render_card
from fit3d_hub.errors import RepoFormatError
from fit3d_hub.methods import get_method
from fit3d_hub.refine import save_refine
from fit3d_hub.schema import (
    BASE_WEIGHTS_NAME,
    CARD_NAME,
    CONFIG_NAME,
    MODEL_TYPE,
    WEIGHTS_NAME,
    Fit3DBlock,
    RepoConfig,
    read_config,
)
from fit3d_hub.weights import save_state_dict


def timm_config(vit: nn.Module) -> dict[str, Any]:
    """timm's own config.json for ``vit`` (architecture, model_args, pretrained_cfg, ...)."""
    from timm.models._hub import save_config_for_hf

    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / CONFIG_NAME
        save_config_for_hf(vit, str(target))
        return json.loads(target.read_text())


def build_config(finetuned: nn.Module, block: Fit3DBlock) -> dict[str, Any]:
    """config.json: timm's config of the fine-tuned backbone plus the ``fit3d`` block.

    Plain timm (``resolve_model_data_config`` on "local-dir:" / "hf-hub:") must see the
    statistics the weights were trained with: ImageNet for every backbone, CLIP included,
    where timm's own pretrained_cfg would say CLIP's.
    """
    config = timm_config(finetuned)
    stats = {k: list(v) for k, v in (("mean", block.mean), ("std", block.std)) if v}
    config["pretrained_cfg"] = {**config.get("pretrained_cfg", {}), **stats}
    config["fit3d"] = block.to_json()
    # transformers reads a config.json with pretrained_cfg and no model_type as a plain timm
    # model (one branch); "fit3d" routes it to fit3d_hub.hf_transformers. timm ignores it.
    config["model_type"] = MODEL_TYPE
    return config


def save_repo(directory: str | Path, finetuned: nn.Module, original: nn.Module | None,
              block: Fit3DBlock, *, include_base: bool | None = None,
              card: str | None = None, refine: nn.Module | None = None,
              decoder: nn.Module | None = None) -> Path:
    """Write a repo into ``directory``; each file is written atomically.

    ``include_base=None`` embeds the original weights only when ``block.base`` names no hub
    source. ``refine`` (the equivariance method's conv) is written to the file
    ``block.refine`` names. Weights go first and config.json last, so a directory with a
    config is whole.
    """
    directory = Path(directory)
    one_branch = get_method(block.method).branches == 1
    if one_branch:  # one network (a GMAE encoder): no original to embed or point at
        if (decoder is None) != (block.gmae is None):
            raise RepoFormatError("the fit3d block's 'gmae' record and the decoder module "
                                  "must come together")
        include_base, block = False, replace(block, base=None)
    embed = (block.base is None) if include_base is None else include_base
    if embed and original is None:
        raise RepoFormatError("include_base=True, but this model was loaded without its "
                              "original backbone (mode='finetuned')")
    if not embed and block.base is None and not one_branch:
        raise RepoFormatError("the original weights have no hub source to point to; "
                              "save with include_base=True")
    if (refine is None) != (block.refine is None):
        raise RepoFormatError("the fit3d block's 'refine' record and the refine module must "
                              "come together")
    directory.mkdir(parents=True, exist_ok=True)
    config = build_config(finetuned, block)
    save_state_dict(finetuned.state_dict(), directory / WEIGHTS_NAME,
                    metadata={"format": "pt", "fit3d": "finetuned"})
    if refine is not None:
        save_refine(refine, directory / block.refine.filename)
    if decoder is not None:
        save_state_dict(decoder.state_dict(), directory / block.gmae.filename,
                        metadata={"format": "pt", "fit3d": "gmae_decoder"})
    if embed:
        save_state_dict(original.state_dict(), directory / BASE_WEIGHTS_NAME,
                        metadata={"format": "pt", "fit3d": "original"})
    else:
        # A stale embedded base would win over the hub reference on load.
        (directory / BASE_WEIGHTS_NAME).unlink(missing_ok=True)
    write_text_atomic(directory / CONFIG_NAME, json.dumps(config, indent=2) + "\n")
    if card is None:
        card = render_card(RepoConfig(config["architecture"], config.get("model_args", {}),
                                      config["pretrained_cfg"], block))
    write_text_atomic(directory / CARD_NAME, card)
    return directory


def validate_repo(directory: str | Path) -> RepoConfig:
    """Check that ``directory`` is a complete repo (before pushing it); returns its config."""
    from safetensors import SafetensorError, safe_open

    directory = Path(directory)
    if not directory.is_dir():
        raise RepoFormatError(f"{directory}: no such directory")
    config = read_config(directory / CONFIG_NAME)
    method = get_method(config.fit3d.method)
    if "refine" in method.repo_extras and config.fit3d.refine is None:
        raise RepoFormatError(f"{directory / CONFIG_NAME}: a {method.name} repo needs "
                              "'fit3d.refine' (its refine conv)")
    if "gmae_decoder" in method.repo_extras and config.fit3d.gmae is None:
        raise RepoFormatError(f"{directory / CONFIG_NAME}: a {method.name} repo needs "
                              "'fit3d.gmae' (its decoder)")
    names = [WEIGHTS_NAME] + ([BASE_WEIGHTS_NAME] if (directory / BASE_WEIGHTS_NAME).exists()
                              else [])
    if config.fit3d.refine is not None:
        names.append(config.fit3d.refine.filename)
    if config.fit3d.gmae is not None:
        names.append(config.fit3d.gmae.filename)
    for name in names:
        path = directory / name
        try:
            with safe_open(str(path), framework="pt") as fh:
                if not list(fh.keys()):
                    raise RepoFormatError(f"{path}: holds no tensors")
        except FileNotFoundError:
            raise RepoFormatError(f"{path}: missing; a FiT3D repo needs it") from None
        except (SafetensorError, OSError) as err:
            raise RepoFormatError(f"{path}: not a readable safetensors file: {err}") from None
    if BASE_WEIGHTS_NAME not in names and config.base is None and method.branches == 2:
        raise RepoFormatError(f"{directory}: has no {BASE_WEIGHTS_NAME} and config.json "
                              "'fit3d.base' is null: the original backbone cannot be found")
    return config
