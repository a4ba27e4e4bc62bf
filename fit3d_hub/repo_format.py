"""Writing and validating repos in the format :mod:`fit3d_hub.schema` describes.

The same layout serves a local directory and a hub model repo, so ``timm.create_model
("hf-hub:<repo>")`` still loads the fine-tuned backbone alone from it.
"""

from __future__ import annotations

import json
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from torch import nn

from fit3d_hub.atomic import atomic_files, finish_interrupted_save
from fit3d_hub.budget import check_bytes
from fit3d_hub.cards import render_card
from fit3d_hub.errors import CheckpointError, RepoFormatError, RepoWeightsError
from fit3d_hub.methods import get_method
from fit3d_hub.schema import (
    BASE_WEIGHTS_NAME,
    CARD_NAME,
    CONFIG_NAME,
    MODEL_TYPE,
    WEIGHTS_NAME,
    WRITE_ID_KEY,
    Fit3DBlock,
    RepoConfig,
    read_config,
)
from fit3d_hub.weights import (
    check_nonfinite,
    check_shapes,
    drop_prefixes,
    read_header,
    write_safetensors,
)


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
    ``block.refine`` names. The files are replaced as one change
    (:func:`~fit3d_hub.atomic.atomic_files`): a kill leaves the old repo or the new one.
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
    config = build_config(finetuned, block)
    # Every file of one save carries its id, so a mix of two saves is refused on load.
    write_id = uuid.uuid4().hex
    config[WRITE_ID_KEY] = write_id
    stamp = {"format": "pt", WRITE_ID_KEY: write_id}
    weights = [(WEIGHTS_NAME, finetuned, "finetuned")]
    if refine is not None:
        weights.append((block.refine.filename, refine, "refine"))
    if decoder is not None:
        weights.append((block.gmae.filename, decoder, "gmae_decoder"))
    if embed:
        weights.append((BASE_WEIGHTS_NAME, original, "original"))
    if card is None:
        card = render_card(RepoConfig(config["architecture"], config.get("model_args", {}),
                                      config["pretrained_cfg"], block))
    for name, module, _ in weights:  # a repo never holds weights that cannot load
        check_nonfinite(module.state_dict(), f"{Path(directory) / name} (not written)")
    with atomic_files(directory) as files:
        for name, module, role in weights:
            write_safetensors(module.state_dict(), files.path(name),
                              metadata={**stamp, "fit3d": role})
        if not embed:
            # A stale embedded base would win over the hub reference on load.
            files.delete(BASE_WEIGHTS_NAME)
        files.path(CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n",
                                           encoding="utf-8")
        files.path(CARD_NAME).write_text(card, encoding="utf-8")
    return directory


def _finite(path: Path) -> None:
    """Every tensor of ``path`` finite, read one tensor at a time."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        names = fh.keys()
        for key in names:
            check_nonfinite({key: fh.get_tensor(key)}, str(path))


def check_weights(config: RepoConfig, files: Mapping[str, Path | None], *,
                  base_from_timm: bool = False, read_weights: bool = False) -> None:
    """The one validator of a repo's weights, before anything is built (``load_fit3d``,
    :func:`validate_repo`, ``push``): the architecture builds from config.json (on the meta
    device) within the memory budget; each safetensors file's header has the keys and shapes
    that architecture (and the refine conv and decoder config.json declares) expects, and
    the id of the save config.json came from; with ``read_weights``, every value is finite.

    ``files`` maps ``finetuned``, ``original``, ``refine`` and ``decoder`` to their paths
    (``None`` or absent: not needed). Pickled files (releases) are checked when read.
    """
    import torch

    from fit3d_hub.backbone import classifier_prefixes, state_bytes, state_shapes, vit_skeleton
    from fit3d_hub.gmae import build_decoder
    from fit3d_hub.refine import refine_conv

    where = config.source
    skeleton = vit_skeleton(config.architecture, config.model_args,
                            config.pretrained_cfg or None, where=where)
    block = config.fit3d
    depth = len(skeleton.blocks)
    if not -depth <= block.layer < depth:
        raise RepoFormatError(f"{where}: field 'fit3d.layer' is {block.layer}; this "
                              f"architecture has blocks {-depth}..{depth - 1}")
    modules = {"finetuned": skeleton, "original": skeleton}
    with torch.device("meta"):  # each builder checks its own size against the budget
        if block.refine is not None:
            modules["refine"] = refine_conv(int(skeleton.embed_dim), block.refine.kernel_size,
                                            where=f"{where}: field 'fit3d.refine.kernel_size'")
        if block.gmae is not None:
            modules["decoder"] = build_decoder(block.gmae, skeleton,
                                               where=f"{where}: field 'fit3d.gmae'")
    expected = {role: state_shapes(module) for role, module in modules.items()}
    sizes = {role: state_bytes(module) for role, module in modules.items()}
    wanted = {role: Path(path) for role, path in files.items() if path is not None}
    check_bytes(sum(sizes.get(role, 0) for role in wanted), where,
                f"loading {' + '.join(wanted) or 'this repo'}")
    for role, path in wanted.items():
        if role not in expected:
            raise RepoFormatError(f"{where}: config.json declares no {role} for {path}")
        if not path.is_file():
            raise RepoFormatError(f"{path}: missing; a FiT3D repo needs it")
        if path.suffix != ".safetensors":
            continue
        try:
            shapes, metadata = read_header(path)
        except CheckpointError as err:
            raise RepoWeightsError(str(err)) from None
        if role == "original" and base_from_timm:
            shapes = drop_prefixes(shapes, classifier_prefixes(skeleton))
        elif config.write_id is not None and metadata.get(WRITE_ID_KEY, config.write_id) \
                != config.write_id:
            raise RepoFormatError(f"{path}: written by another save than {where} (save id "
                                  f"{metadata[WRITE_ID_KEY][:8]} vs {config.write_id[:8]}): "
                                  "the repo mixes two saves; save or download it again")
        if not shapes:
            raise RepoFormatError(f"{path}: holds no tensors")
        check_shapes(expected[role], shapes, str(path))  # CheckpointError, as on load
        if read_weights:
            _finite(path)


def validate_repo(directory: str | Path) -> RepoConfig:
    """Check that ``directory`` is a complete repo that loads (before pushing it): config.json,
    the files it needs, their keys and shapes, finite weights; returns its config."""
    directory = Path(directory)
    if not directory.is_dir():
        raise RepoFormatError(f"{directory}: no such directory")
    finish_interrupted_save(directory)
    config = read_config(directory / CONFIG_NAME)
    method = get_method(config.fit3d.method)
    if "refine" in method.repo_extras and config.fit3d.refine is None:
        raise RepoFormatError(f"{directory / CONFIG_NAME}: a {method.name} repo needs "
                              "'fit3d.refine' (its refine conv)")
    if "gmae_decoder" in method.repo_extras and config.fit3d.gmae is None:
        raise RepoFormatError(f"{directory / CONFIG_NAME}: a {method.name} repo needs "
                              "'fit3d.gmae' (its decoder)")
    files = {"finetuned": directory / WEIGHTS_NAME}
    if (directory / BASE_WEIGHTS_NAME).exists():
        files["original"] = directory / BASE_WEIGHTS_NAME
    if config.fit3d.refine is not None:
        files["refine"] = directory / config.fit3d.refine.filename
    if config.fit3d.gmae is not None:
        files["decoder"] = directory / config.fit3d.gmae.filename
    check_weights(config, files, read_weights=True)
    if "original" not in files and config.base is None and method.branches == 2:
        raise RepoFormatError(f"{directory}: has no {BASE_WEIGHTS_NAME} and config.json "
                              "'fit3d.base' is null: the original backbone cannot be found")
    return config
