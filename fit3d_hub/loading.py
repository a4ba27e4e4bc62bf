"""``load_fit3d``: registry name, hub repo id or local directory -> a ready :class:`FiT3D`."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from fit3d_hub.backbone import load_vit
from fit3d_hub.errors import HubFileNotFoundError, RepoFormatError, UnknownModelError
from fit3d_hub.hub import HubFile, download_command, fetch
from fit3d_hub.model import FiT3D
from fit3d_hub.refine import load_refine, refine_conv
from fit3d_hub.registry import get_spec, is_registered, registry_config, releases_of
from fit3d_hub.releases import equivariance_repo, read_dinov2_state_dict
from fit3d_hub.schema import (
    BASE_WEIGHTS_NAME,
    CONFIG_NAME,
    MODES,
    WEIGHTS_NAME,
    RepoConfig,
    read_config,
)


@dataclass
class ResolvedModel:
    """Where a model's config and weights are on this machine (``None``: not needed/random)."""

    config: RepoConfig
    finetuned_path: Path | None
    base_path: Path | None
    base_from_timm: bool
    """The base file is a timm hub checkpoint (may carry a classifier to drop)."""
    random: bool = False
    """Built with random weights (``pretrained=False``)."""
    refine_path: Path | None = None
    """The refine conv's weights (equivariance repos, when the fine-tuned branch is needed)."""
    finetuned_format: str = "state_dict"
    """How the fine-tuned file is laid out (:data:`fit3d_hub.registry.FORMATS`)."""


def model_id(name_or_path: str | os.PathLike) -> str:
    """A model as a run records it (checkpoint settings, provenance): a local folder by its
    absolute path, so ``./model`` and ``/abs/model`` agree; a name or repo id as given."""
    name = os.fspath(name_or_path)
    local = Path(name).expanduser()
    return str(local.resolve()) if local.is_dir() else name


def _is_pathlike(name: str) -> bool:
    """A string meant as a path, not as an ``owner/name`` hub repo id."""
    return name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1


def resolve(
    name_or_path: str | os.PathLike,
    *,
    mode: str = "concat",
    pretrained: bool = True,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    local_files_only: bool | None = None,
) -> ResolvedModel:
    """Find (downloading through the hub cache where allowed) what ``mode`` needs."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    need_orig = mode in ("concat", "original")
    need_fine = mode in ("concat", "finetuned")
    name = os.fspath(name_or_path)
    hint = download_command(name, revision=revision, cache_dir=cache_dir)

    local = Path(name).expanduser()
    if local.is_dir():
        return _resolve_repo_dir(local, need_orig, need_fine, pretrained, cache_dir,
                                 local_files_only, hint)
    if is_registered(name):
        spec = get_spec(name)
        config = registry_config(spec)
        if not pretrained:
            return ResolvedModel(config, None, None, base_from_timm=True, random=True)
        if need_fine and not spec.has_finetuned_weights:
            released = ", ".join(releases_of(spec.base_name))
            raise HubFileNotFoundError(
                f"{spec.name}: no 3D-aware weights were released for this base"
                f"{f' (released: {released})' if released else ''}; train one "
                "(`fit3d-hub methods`) and load its output directory, or use mode='original' "
                "or pretrained=False")
        base = HubFile(spec.base_repo, WEIGHTS_NAME)
        fine = HubFile(spec.finetuned_repo, spec.finetuned_file, revision)
        # an equivariance release is merged into the base: it needs both files
        merged = need_fine and spec.weights_format == "equivariance_ckpt"
        wanted = [f for f, need in ((base, need_orig or merged), (fine, need_fine)) if need]
        command = download_command(spec.name, revision=revision, cache_dir=cache_dir)
        paths = fetch(wanted, cache_dir=cache_dir, local_files_only=local_files_only,
                      command=command)
        if merged:
            repo = equivariance_repo(spec, paths[fine], paths[base], cache_dir)
            return _resolve_repo_dir(repo, need_orig, need_fine, True, cache_dir,
                                     local_files_only, command)
        return ResolvedModel(config, paths.get(fine), paths.get(base), base_from_timm=True,
                             finetuned_format=spec.weights_format)
    if _is_pathlike(name):
        raise UnknownModelError(f"{name}: no such model directory")
    if name.count("/") != 1:
        get_spec(name)  # raises the error that lists the registry names
    return _resolve_hub_repo(name, need_orig, need_fine, pretrained, revision, cache_dir,
                             local_files_only, hint)


def _base_ref_file(config: RepoConfig, where: str) -> HubFile:
    ref = config.base
    if ref is None:
        raise RepoFormatError(f"{where}: has no {BASE_WEIGHTS_NAME} and config.json 'fit3d.base' "
                              "is null, so the original backbone cannot be found")
    return HubFile(ref.repo_id, ref.filename, ref.revision)


def _resolve_repo_dir(directory: Path, need_orig: bool, need_fine: bool, pretrained: bool,
                      cache_dir, local_files_only, hint: str) -> ResolvedModel:
    config = read_config(directory / CONFIG_NAME)
    if not pretrained:
        return ResolvedModel(config, None, None, base_from_timm=False, random=True)
    fine = directory / WEIGHTS_NAME
    if need_fine and not fine.is_file():
        raise RepoFormatError(f"{fine}: missing; a FiT3D repo needs the fine-tuned weights")
    refine = None
    if need_fine and config.fit3d.refine is not None:
        refine = directory / config.fit3d.refine.filename
        if not refine.is_file():
            raise RepoFormatError(f"{refine}: missing; config.json's 'fit3d.refine' names it "
                                  "(the refine conv of the fine-tuned branch)")
    base, from_timm = None, False
    if need_orig:
        base = directory / BASE_WEIGHTS_NAME
        if not base.is_file():
            ref = _base_ref_file(config, str(directory))
            base = fetch([ref], cache_dir=cache_dir, local_files_only=local_files_only,
                         command=hint)[ref]
            from_timm = True
    return ResolvedModel(config, fine if need_fine else None, base, from_timm,
                         refine_path=refine)


def _resolve_hub_repo(repo_id: str, need_orig: bool, need_fine: bool, pretrained: bool,
                      revision, cache_dir, local_files_only, hint: str) -> ResolvedModel:
    cfg = HubFile(repo_id, CONFIG_NAME, revision)
    fine = HubFile(repo_id, WEIGHTS_NAME, revision)
    embedded = HubFile(repo_id, BASE_WEIGHTS_NAME, revision, optional=True)
    wanted = [cfg]
    if pretrained:
        wanted += [f for f, need in ((fine, need_fine), (embedded, need_orig)) if need]
    paths = fetch(wanted, cache_dir=cache_dir, local_files_only=local_files_only, command=hint)
    config = read_config(paths[cfg])
    if not pretrained:
        return ResolvedModel(config, None, None, base_from_timm=False, random=True)
    base, from_timm = paths.get(embedded), False
    if need_orig and base is None:
        ref = _base_ref_file(config, repo_id)
        base = fetch([ref], cache_dir=cache_dir, local_files_only=local_files_only,
                     command=hint)[ref]
        from_timm = True
    refine = None
    if need_fine and config.fit3d.refine is not None:
        ref = HubFile(repo_id, config.fit3d.refine.filename, revision)
        refine = fetch([ref], cache_dir=cache_dir, local_files_only=local_files_only,
                       command=hint)[ref]
    return ResolvedModel(config, paths.get(fine), base, from_timm, refine_path=refine)


def build(resolved: ResolvedModel, *, mode: str = "concat", pad: str | None = None) -> FiT3D:
    """Instantiate both backbones from a resolved model and load their weights strictly."""
    config, block = resolved.config, resolved.config.fit3d

    def backbone(path: Path | None, from_timm: bool, convert=None) -> torch.nn.Module:
        return load_vit(config.architecture, config.model_args, config.pretrained_cfg or None,
                        path, drop_classifier=from_timm, mean=block.mean, std=block.std,
                        convert=convert)

    original = (backbone(resolved.base_path, resolved.base_from_timm)
                if mode in ("concat", "original") else None)
    convert = read_dinov2_state_dict if resolved.finetuned_format == "dinov2_state_dict" \
        else None
    finetuned = (backbone(resolved.finetuned_path, False, convert)
                 if mode in ("concat", "finetuned") else None)
    refine = None
    if finetuned is not None and block.refine is not None:
        refine = (load_refine(resolved.refine_path, block.refine, int(finetuned.embed_dim))
                  if resolved.refine_path is not None
                  else refine_conv(int(finetuned.embed_dim), block.refine.kernel_size))
    model = FiT3D(original, finetuned, mode=mode, pad=pad, layer=block.layer, norm=block.norm,
                  refine=refine)
    model.fit3d_block = replace(block)
    if resolved.random:
        # Random weights have no hub source that a saved repo could point at.
        model.fit3d_block = replace(block, base=None,
                                    training={"init": "random (pretrained=False)"})
    return model.eval()


def load_fit3d(
    name_or_path: str | os.PathLike,
    *,
    mode: str = "concat",
    pretrained: bool = True,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    local_files_only: bool | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    pad: str | None = None,
) -> FiT3D:
    """Load an original + 3D-aware fine-tuned backbone pair, in eval mode.

    Args:
        name_or_path: a registry name (``"dinov2_small"``, see :func:`list_models`; the
            authors' hubconf names such as ``"dinov2_small_fine"`` work too), a hub repo id,
            or a local directory in the repo format.
        mode: ``"concat"``, ``"finetuned"`` or ``"original"``; the last two load and run
            one backbone only.
        pretrained: ``False`` builds the architecture with random weights (no download).
        revision: branch, tag or commit of the fine-tuned weights' repo.
        cache_dir: Hugging Face cache directory (default: the hub's).
        local_files_only: only use the cache; ``None`` follows ``HF_HUB_OFFLINE``.
        device, dtype: moved to these after loading.
        pad: ``None`` or ``"center"`` (see :class:`FiT3D`).
    """
    resolved = resolve(name_or_path, mode=mode, pretrained=pretrained, revision=revision,
                       cache_dir=cache_dir, local_files_only=local_files_only)
    model = build(resolved, mode=mode, pad=pad)
    if device is not None or dtype is not None:
        model = model.to(device=device, dtype=dtype)
    return model
