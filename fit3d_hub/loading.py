"""``load_fit3d``: registry name, hub repo id or local directory -> a ready :class:`FiT3D`."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from fit3d_hub.atomic import finish_interrupted_save
from fit3d_hub.errors import (
    HubFileNotFoundError,
    RepoFormatError,
    UnknownModelError,
    UsageError,
)
from fit3d_hub.hub import HubFile, download_command, fetch
from fit3d_hub.methods import get_method
from fit3d_hub.registry import get_spec, is_registered, registry_config, releases_of
from fit3d_hub.schema import (
    BASE_WEIGHTS_NAME,
    CONFIG_NAME,
    MODES,
    WEIGHTS_NAME,
    RepoConfig,
    read_config,
)

if TYPE_CHECKING:
    import torch

    from fit3d_hub.model import FiT3D

# Resolving (what `fit3d-hub download` does) needs no torch: the modules that build models
# are imported by the functions that build them.


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
    mode: str = "concat"
    """The mode the files were gathered for (a one-network repo's is ``finetuned``)."""
    decoder_path: Path | None = None
    """A GMAE repo's decoder weights."""


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
    mode: str | None = None,
    pretrained: bool = True,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    local_files_only: bool | None = None,
) -> ResolvedModel:
    """Find (downloading through the hub cache where allowed) what ``mode`` needs
    (``None``: the repo's own, ``concat`` for a pair)."""
    if mode is not None and mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    name = os.fspath(name_or_path)
    hint = download_command(name, revision=revision, cache_dir=cache_dir)

    local = Path(name).expanduser()
    if local.is_dir():
        return _resolve_repo_dir(local, mode, pretrained, cache_dir, local_files_only, hint)
    if is_registered(name):
        return _resolve_registered(get_spec(name), mode or "concat", pretrained, revision,
                                   cache_dir, local_files_only)
    if _is_pathlike(name):
        raise UnknownModelError(f"{name}: no such model directory")
    if name.count("/") != 1:
        get_spec(name)  # raises the error that lists the registry names
    return _resolve_hub_repo(name, mode, pretrained, revision, cache_dir, local_files_only,
                             hint)


def repo_mode(config: RepoConfig, mode: str | None, where: str) -> str:
    """The mode to load a repo in: what was asked, else ``concat``; a one-network repo (a
    GMAE encoder) has only ``finetuned``, and another mode is a usage error."""
    method = get_method(config.fit3d.method)
    if method.branches == 1:
        if mode not in (None, "finetuned"):
            raise UsageError(f"{where}: mode={mode!r} has no meaning for a {method.name} repo "
                             "(one network, no original beside it); load it without mode")
        return "finetuned"
    return mode or "concat"


def _needs(mode: str) -> tuple[bool, bool]:
    return mode in ("concat", "original"), mode in ("concat", "finetuned")


def _resolve_registered(spec, mode: str, pretrained: bool, revision, cache_dir,
                        local_files_only) -> ResolvedModel:
    config = registry_config(spec)
    if not pretrained:
        return ResolvedModel(config, None, None, base_from_timm=True, random=True, mode=mode)
    need_orig, need_fine = _needs(mode)
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
        from fit3d_hub.releases import equivariance_repo  # merging needs torch

        repo = equivariance_repo(spec, paths[fine], paths[base], cache_dir)
        return _resolve_repo_dir(repo, mode, True, cache_dir, local_files_only, command)
    return ResolvedModel(config, paths.get(fine), paths.get(base), base_from_timm=True,
                         finetuned_format=spec.weights_format, mode=mode)


def _base_ref_file(config: RepoConfig, where: str) -> HubFile:
    ref = config.base
    if ref is None:
        raise RepoFormatError(f"{where}: has no {BASE_WEIGHTS_NAME} and config.json 'fit3d.base' "
                              "is null, so the original backbone cannot be found")
    return HubFile(ref.repo_id, ref.filename, ref.revision)


def _resolve_repo_dir(directory: Path, mode: str | None, pretrained: bool, cache_dir,
                      local_files_only, hint: str) -> ResolvedModel:
    finish_interrupted_save(directory)  # a save cut short after its commit (no torch)
    config = read_config(directory / CONFIG_NAME)
    mode = repo_mode(config, mode, str(directory))
    if not pretrained:
        return ResolvedModel(config, None, None, base_from_timm=False, random=True, mode=mode)
    need_orig, need_fine = _needs(mode)
    fine = directory / WEIGHTS_NAME
    if need_fine and not fine.is_file():
        raise RepoFormatError(f"{fine}: missing; a FiT3D repo needs the fine-tuned weights")
    extras = {}
    for key, spec, what in (("refine_path", config.fit3d.refine, "the refine conv of the "
                             "fine-tuned branch"),
                            ("decoder_path", config.fit3d.gmae, "the GMAE decoder")):
        if need_fine and spec is not None:
            extras[key] = directory / spec.filename
            if not extras[key].is_file():
                raise RepoFormatError(f"{extras[key]}: missing; config.json names it ({what})")
    base, from_timm = None, False
    if need_orig:
        base = directory / BASE_WEIGHTS_NAME
        if not base.is_file():
            ref = _base_ref_file(config, str(directory))
            base = fetch([ref], cache_dir=cache_dir, local_files_only=local_files_only,
                         command=hint)[ref]
            from_timm = True
    return ResolvedModel(config, fine if need_fine else None, base, from_timm, mode=mode,
                         **extras)


def _resolve_hub_repo(repo_id: str, mode: str | None, pretrained: bool, revision, cache_dir,
                      local_files_only, hint: str) -> ResolvedModel:
    cfg = HubFile(repo_id, CONFIG_NAME, revision)
    fine = HubFile(repo_id, WEIGHTS_NAME, revision)
    embedded = HubFile(repo_id, BASE_WEIGHTS_NAME, revision, optional=True)
    # one request for what the mode asked for probably needs, so that offline every missing
    # file is listed at once; config.json then says what the repo needs
    wanted = [cfg]
    if pretrained:
        need_orig, need_fine = _needs(mode or "concat")
        wanted += [f for f, need in ((fine, need_fine), (embedded, need_orig)) if need]
    paths = fetch(wanted, cache_dir=cache_dir, local_files_only=local_files_only, command=hint)
    config = read_config(paths[cfg])
    mode = repo_mode(config, mode, repo_id)
    if not pretrained:
        return ResolvedModel(config, None, None, base_from_timm=False, random=True, mode=mode)
    need_orig, need_fine = _needs(mode)
    extras = {key: HubFile(repo_id, spec.filename, revision)
              for key, spec in (("refine_path", config.fit3d.refine),
                                ("decoder_path", config.fit3d.gmae))
              if need_fine and spec is not None}
    more = [f for f in ([fine] if need_fine else []) + list(extras.values()) if f not in paths]
    if more:
        paths.update(fetch(more, cache_dir=cache_dir, local_files_only=local_files_only,
                           command=hint))
    base, from_timm = paths.get(embedded) if need_orig else None, False
    if need_orig and base is None:
        ref = _base_ref_file(config, repo_id)
        base = fetch([ref], cache_dir=cache_dir, local_files_only=local_files_only,
                     command=hint)[ref]
        from_timm = True
    return ResolvedModel(config, paths.get(fine) if need_fine else None, base, from_timm,
                         mode=mode, **{key: paths[f] for key, f in extras.items()})


def build(resolved: ResolvedModel, *, pad: str | None = None) -> FiT3D:
    """Instantiate the backbones ``resolved.mode`` needs and load their weights strictly."""

    from fit3d_hub.backbone import load_vit
    from fit3d_hub.gmae import build_decoder
    from fit3d_hub.model import FiT3D
    from fit3d_hub.refine import load_refine, refine_conv
    from fit3d_hub.releases import read_dinov2_state_dict
    from fit3d_hub.repo_format import check_weights
    from fit3d_hub.weights import load_strict, read_state_dict

    config, block, mode = resolved.config, resolved.config.fit3d, resolved.mode
    # every file against config.json (shapes, save id, memory) before anything is built
    check_weights(config, {"finetuned": resolved.finetuned_path,
                           "original": resolved.base_path,
                           "refine": resolved.refine_path, "decoder": resolved.decoder_path},
                  base_from_timm=resolved.base_from_timm)

    def backbone(path: Path | None, from_timm: bool, convert=None) -> torch.nn.Module:
        return load_vit(config.architecture, config.model_args, config.pretrained_cfg or None,
                        path, drop_classifier=from_timm, mean=block.mean, std=block.std,
                        convert=convert, where=config.source)

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
    decoder = None
    if finetuned is not None and block.gmae is not None:
        decoder = build_decoder(block.gmae, finetuned)
        if resolved.decoder_path is not None:
            load_strict(decoder, read_state_dict(resolved.decoder_path),
                        str(resolved.decoder_path))
    try:
        model = FiT3D(original, finetuned, mode=mode, pad=pad, layer=block.layer,
                      norm=block.norm, refine=refine, decoder=decoder)
    except UsageError as err:  # the block's layer does not fit the architecture
        raise RepoFormatError(f"{config.source}: field 'fit3d.{err}'") from None
    model.fit3d_block = replace(block)
    if resolved.random:
        # Random weights have no hub source that a saved repo could point at.
        model.fit3d_block = replace(block, base=None,
                                    training={"init": "random (pretrained=False)"})
    return model.eval()


def load_fit3d(
    name_or_path: str | os.PathLike,
    *,
    mode: str | None = None,
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
        mode: ``"concat"`` (the default for a pair), ``"finetuned"`` or ``"original"``; the
            last two load and run one backbone only. A one-network repo (a GMAE encoder)
            loads as ``"finetuned"``; another mode is refused.
        pretrained: ``False`` builds the architecture with random weights (no download).
        revision: branch, tag or commit of the fine-tuned weights' repo.
        cache_dir: Hugging Face cache directory (default: the hub's).
        local_files_only: only use the cache; ``None`` follows ``HF_HUB_OFFLINE``.
        device, dtype: moved to these after loading.
        pad: ``None`` or ``"center"`` (see :class:`FiT3D`).
    """
    resolved = resolve(name_or_path, mode=mode, pretrained=pretrained, revision=revision,
                       cache_dir=cache_dir, local_files_only=local_files_only)
    model = build(resolved, pad=pad)
    if device is not None or dtype is not None:
        model = model.to(device=device, dtype=dtype)
    return model
