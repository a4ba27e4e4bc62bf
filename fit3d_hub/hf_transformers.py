"""FiT3D in transformers: AutoConfig, AutoModel, AutoBackbone, AutoImageProcessor, pipeline.

Importing this module registers model type ``"fit3d"`` with transformers' auto classes;
``import fit3d_hub`` does so whenever transformers is installed, so no remote code is ever
downloaded (``trust_remote_code`` is not needed). A repo written by
:meth:`fit3d_hub.FiT3D.save_pretrained` carries ``"model_type": "fit3d"`` in its config.json
beside timm's keys, so the same file still loads with timm and :func:`fit3d_hub.load_fit3d`.

Weights are read by :func:`fit3d_hub.load_fit3d` (the original branch comes from its hub
source or ``base.safetensors``), not by transformers' key-by-key loader: numbers are those
of ``load_fit3d``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from huggingface_hub import try_to_load_from_cache
from huggingface_hub.dataclasses import strict
from torch import nn

try:
    from transformers import (
        AutoBackbone,
        AutoConfig,
        AutoImageProcessor,
        AutoModel,
        PreTrainedConfig,
        PreTrainedModel,
    )
    from transformers.backbone_utils import BackboneConfigMixin, BackboneMixin
    from transformers.image_processing_utils import BaseImageProcessor, BatchFeature
    from transformers.modeling_outputs import BackboneOutput, BaseModelOutputWithPooling
except ImportError as err:
    raise ImportError(f"fit3d_hub.hf_transformers needs transformers 5.5 or later ({err}); "
                      'install it with: pip install "fit3d-hub[transformers]"') from None

from fit3d_hub.backbone import create_vit, vit_skeleton
from fit3d_hub.errors import RepoFormatError
from fit3d_hub.jsonio import read_json_object
from fit3d_hub.loading import load_fit3d, resolve
from fit3d_hub.model import FiT3D
from fit3d_hub.refine import refine_conv
from fit3d_hub.registry import is_registered
from fit3d_hub.schema import CONFIG_NAME, MODEL_TYPE, MODES, Fit3DBlock
from fit3d_hub.transforms import FiT3DTransform, get_transform

HUB_KWARGS = ("revision", "cache_dir", "local_files_only")
"""The hub arguments transformers passes that :func:`load_fit3d` understands."""


def _depth(architecture: str, model_args: dict) -> int:
    """Number of blocks, from the arguments or an empty (meta-device) build of the model."""
    if "depth" in model_args:
        return int(model_args["depth"])
    return len(vit_skeleton(architecture, model_args).blocks)


@strict
class FiT3DConfig(BackboneConfigMixin, PreTrainedConfig):
    r"""A FiT3D repo's config.json as transformers reads it.

    architecture, model_args, pretrained_cfg: timm's keys (the ViT both branches share).
    fit3d: the repo's ``fit3d`` block (patch size, width, statistics, provenance).
    mode: ``"concat"`` (``[original | finetuned]`` channels), ``"finetuned"`` or ``"original"``.
    apply_layernorm: backbone feature maps pass the final norm (as FiT3D's features do).
    reshape_hidden_states: backbone feature maps as NCHW (``True``) or as ``(B, 1 + N, C)``
        tokens, CLS first and register tokens dropped (``False``: what DPT's readout expects).

    ``stage_names`` are ``stem, stage1 .. stageN``: ``stageK`` is block ``K - 1``'s output.
    """

    model_type = MODEL_TYPE

    architecture: str = "vit_small_patch14_dinov2"
    model_args: dict[str, Any] | None = None
    pretrained_cfg: dict[str, Any] | None = None
    fit3d: dict[str, Any] | None = None
    mode: str = "concat"
    apply_layernorm: bool = True
    reshape_hidden_states: bool = True
    _out_features: list[str] | None = None
    _out_indices: list[int] | None = None

    def __post_init__(self, **kwargs):
        self.model_args = dict(self.model_args or {})
        self.pretrained_cfg = dict(self.pretrained_cfg or {})
        self.fit3d = dict(self.fit3d or {})
        self.num_hidden_layers = _depth(self.architecture, self.model_args)
        block = Fit3DBlock.from_json(self.fit3d, CONFIG_NAME)
        self.embed_dim = block.embed_dim or int(self.model_args.get("embed_dim", 0)) or None
        self.patch_size = block.patch_size
        self.set_mode(self.mode)
        self.stage_names = ["stem"] + [f"stage{i}" for i in range(1, self.num_hidden_layers + 1)]
        self.set_output_features_output_indices(out_indices=kwargs.pop("out_indices", None),
                                                out_features=kwargs.pop("out_features", None))
        super().__post_init__(**kwargs)

    def set_mode(self, mode: str) -> None:
        """Choose the branches; ``hidden_size`` follows (two widths in ``"concat"``)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
        self.mode = mode
        width = self.embed_dim
        self.hidden_size = width * (2 if mode == "concat" else 1) if width else None

    def validate_architecture(self):
        """Nothing beyond the fields' own checks (transformers calls this on init)."""


class FiT3DPreTrainedModel(PreTrainedModel):
    """Holds a :class:`fit3d_hub.FiT3D` as ``self.fit3d``; loading goes through load_fit3d."""

    config_class = FiT3DConfig
    config: FiT3DConfig
    base_model_prefix = "fit3d"
    main_input_name = "pixel_values"
    input_modalities = ("image",)

    def __init__(self, config: FiT3DConfig, fit3d: FiT3D | None = None):
        super().__init__(config)
        if fit3d is None:
            # from_config (e.g. transformers' load_backbone): the architecture, random weights
            fit3d = _random_fit3d(config)
        self.fit3d = fit3d
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        """timm initialised every module when it built them; nothing to redo."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, config=None, **kwargs):
        """Load a FiT3D repo (local folder or hub id) with :func:`fit3d_hub.load_fit3d`.

        Keyword arguments that name config fields (``out_indices``, ``mode``,
        ``reshape_hidden_states``, ...) update the config; ``dtype``/``torch_dtype`` and
        ``device_map`` (one device) move the model.
        """
        name = str(pretrained_model_name_or_path)
        hub = {k: kwargs.pop(k) for k in HUB_KWARGS if kwargs.get(k) is not None}
        dtype = kwargs.pop("dtype", None) or kwargs.pop("torch_dtype", None)
        device = kwargs.pop("device_map", None)
        if config is None:
            config = fit3d_config(name, **hub)
        for key in list(kwargs):
            if key in ("out_indices", "out_features", "apply_layernorm",
                       "reshape_hidden_states", "output_hidden_states"):
                setattr(config, key, kwargs.pop(key))
        config.set_mode(kwargs.pop("mode", config.mode))
        model = load_fit3d(name, mode=config.mode, **hub,
                           dtype=dtype if isinstance(dtype, torch.dtype) else None,
                           device=device if isinstance(device, (str, torch.device)) else None)
        return cls(config, fit3d=model).eval()

    def save_pretrained(self, save_directory, *args, **kwargs) -> None:
        """Write the FiT3D repo format (readable by timm, load_fit3d and transformers)."""
        self.fit3d.save_pretrained(save_directory)


def _random_fit3d(config: FiT3DConfig) -> FiT3D:
    block = Fit3DBlock.from_json(config.fit3d, CONFIG_NAME)
    branches = {name: (create_vit(config.architecture, config.model_args)
                       if config.mode in ("concat", name) else None)
                for name in ("original", "finetuned")}
    fine = branches["finetuned"]
    refine = (refine_conv(int(fine.embed_dim), block.refine.kernel_size)
              if fine is not None and block.refine is not None else None)
    model = FiT3D(branches["original"], fine, mode=config.mode, layer=block.layer,
                  norm=block.norm, refine=refine)
    model.fit3d_block = block
    return model


def _embeddings(vit: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """timm's token sequence before the first block (as its forward_intermediates builds it;
    ``Eva`` (DINOv3) also returns its rotary embedding, which the blocks take apart)."""
    tokens = vit._pos_embed(vit.patch_embed(x))
    if isinstance(tokens, tuple):
        tokens = tokens[0]
    drop = getattr(vit, "patch_drop", None)  # Eva holds None in eval builds
    return vit.norm_pre(drop(tokens) if drop is not None else tokens)


class FiT3DModel(FiT3DPreTrainedModel):
    """``last_hidden_state``: the final normed tokens ``(B, prefix + N, C_out)`` of both
    branches side by side (patch tokens = ``load_fit3d``'s features); ``pooler_output``: the
    CLS tokens ``(B, C_out)``; ``hidden_states``: embeddings and every block's output."""

    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool | None = None,
                return_dict: bool | None = None, **kwargs) -> BaseModelOutputWithPooling:
        want = (output_hidden_states if output_hidden_states is not None
                else self.config.output_hidden_states)
        x = self.fit3d._prepare(pixel_values)
        final, layers = self.fit3d.forward_intermediates(x, indices=None, output_fmt="NLC",
                                                         return_prefix_tokens=True)
        hidden = None
        if want:
            stem = torch.cat([_embeddings(v, x) for v in self.fit3d._branches()], dim=-1)
            hidden = (stem, *(torch.cat([p, t], dim=1) for t, p in layers))
        out = BaseModelOutputWithPooling(last_hidden_state=final, pooler_output=final[:, 0],
                                         hidden_states=hidden)
        return out if return_dict is not False else out.to_tuple()


class FiT3DBackbone(BackboneMixin, FiT3DPreTrainedModel):
    """Feature maps of the requested stages (``out_indices``; ``stageK`` = block ``K - 1``):
    NCHW with ``[original | finetuned]`` channels, or tokens when ``reshape_hidden_states``
    is off. ``channels`` gives each map's width."""

    has_attentions = False

    def __init__(self, config: FiT3DConfig, fit3d: FiT3D | None = None):
        super().__init__(config, fit3d=fit3d)
        width = self.fit3d.out_channels
        self.num_features = [width] * (config.num_hidden_layers + 1)

    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool | None = None,
                return_dict: bool | None = None, **kwargs) -> BackboneOutput:
        x = self.fit3d._prepare(pixel_values)
        h, w = x.shape[-2] // self.fit3d.patch_size, x.shape[-1] // self.fit3d.patch_size
        stages = [self.stage_names.index(name) for name in self.out_features]
        maps = []
        blocks = [s - 1 for s in stages if s > 0]
        # per requested block: CLS then patch tokens (registers dropped), branches side by side
        layers = iter([torch.cat([prefix[:, :1], patches], dim=1)
                       for patches, prefix in self.fit3d.forward_intermediates(
                           x, indices=blocks, norm=self.config.apply_layernorm,
                           output_fmt="NLC", return_prefix_tokens=True,
                           intermediates_only=True)] if blocks else [])
        for stage in stages:
            if stage == 0:
                tokens = torch.cat([_stem_tokens(v, x, self.config.apply_layernorm)
                                    for v in self.fit3d._branches()], dim=-1)
            else:
                tokens = next(layers)
            if self.config.reshape_hidden_states:
                tokens = tokens[:, 1:].unflatten(1, (h, w)).permute(0, 3, 1, 2).contiguous()
            maps.append(tokens)
        out = BackboneOutput(feature_maps=tuple(maps))
        return out if return_dict is not False else out.to_tuple()


def _stem_tokens(vit: nn.Module, x: torch.Tensor, norm: bool) -> torch.Tensor:
    tokens = _embeddings(vit, x)
    if norm:
        tokens = vit.norm(tokens)
    return torch.cat([tokens[:, :1], tokens[:, vit.num_prefix_tokens:]], dim=1)


class FiT3DImageProcessor(BaseImageProcessor):
    """:func:`fit3d_hub.get_transform`'s preprocessing: RGB in [0, 1], each side rounded down
    to a patch multiple (or the shorter side scaled to ``size`` first), bilinear, normalised
    with the repo's statistics. Images of different sizes cannot share a batch tensor."""

    model_input_names: ClassVar[list[str]] = ["pixel_values"]

    def __init__(self, image_mean=(0.485, 0.456, 0.406), image_std=(0.229, 0.224, 0.225),
                 patch_size: int = 14, size: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)
        self.patch_size = int(patch_size)
        self.size = size

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """Statistics and patch size from a FiT3D repo's config.json."""
        hub = {k: kwargs.pop(k) for k in HUB_KWARGS if kwargs.get(k) is not None}
        transform = get_transform(str(pretrained_model_name_or_path), **hub)
        return cls(image_mean=transform.mean, image_std=transform.std,
                   patch_size=transform.patch_size, size=kwargs.pop("size", None))

    def preprocess(self, images, return_tensors: str | None = "pt", size: int | None = None,
                   **kwargs) -> BatchFeature:
        transform = FiT3DTransform(tuple(self.image_mean), tuple(self.image_std),
                                   self.patch_size, size if size is not None else self.size)
        batch = images if isinstance(images, (list, tuple)) else [images]
        if isinstance(images, torch.Tensor) and images.dim() == 4:
            batch = list(images)
        pixels = [transform(image) for image in batch]
        shapes = {tuple(p.shape) for p in pixels}
        if len(shapes) > 1:
            raise ValueError(f"images of different sizes give different tensor shapes "
                             f"{sorted(shapes)}; pass size= or one image at a time")
        return BatchFeature({"pixel_values": torch.stack(pixels)}, tensor_type=return_tensors)


def _read_local_config(name: str, **hub: Any) -> dict | None:
    """config.json of a local folder, or of a hub repo already in the cache (no network)."""
    path = Path(name) / CONFIG_NAME
    if not path.is_file():
        cached = try_to_load_from_cache(name, CONFIG_NAME, cache_dir=hub.get("cache_dir"),
                                        revision=hub.get("revision"))
        if not isinstance(cached, str):
            return None
        path = Path(cached)
    return read_json_object(path)


def fit3d_config(name: str, **hub: Any) -> FiT3DConfig:
    """The :class:`FiT3DConfig` of a FiT3D repo (local folder, hub id or registry name; only
    config.json is read); anything else is refused in one line naming it."""
    config = resolve(name, pretrained=False, **hub).config
    return FiT3DConfig(architecture=config.architecture, model_args=config.model_args,
                       pretrained_cfg=config.pretrained_cfg, fit3d=config.fit3d.to_json())


def is_fit3d_repo(name: str, **hub: Any) -> bool:
    """Whether ``name`` is a registry name, or a local folder or cached hub repo whose
    config.json is a FiT3D's."""
    if is_registered(name):
        return True
    try:
        raw = _read_local_config(str(name), **hub)
    except RepoFormatError:
        return False
    return raw is not None and raw.get("model_type") == MODEL_TYPE


def _patch_auto(auto: type, load: Any) -> None:
    """transformers asks the hub whether every name is a repo before loading (and >= 5.1
    does so for AutoBackbone), which fails for local folders and offline, and knows no
    registry names. For FiT3D repos and registry names go straight to fit3d-hub's class;
    every other name takes transformers' path unchanged."""
    original = auto.from_pretrained.__func__
    if getattr(original, "_fit3d", False):
        return

    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        hub = {k: kwargs.get(k) for k in ("cache_dir", "revision")}
        if is_fit3d_repo(str(pretrained_model_name_or_path), **hub):
            kwargs.pop("use_timm_backbone", None)
            kwargs.pop("trust_remote_code", None)
            return load(pretrained_model_name_or_path, *args, **kwargs)
        return original(cls, pretrained_model_name_or_path, *args, **kwargs)

    from_pretrained._fit3d = True
    auto.from_pretrained = classmethod(from_pretrained)


def _config_from_pretrained(name: str, *args, **kwargs) -> FiT3DConfig:
    hub = {k: kwargs.pop(k) for k in HUB_KWARGS if kwargs.get(k) is not None}
    config = fit3d_config(str(name), **hub)
    if "mode" in kwargs:
        config.set_mode(kwargs.pop("mode"))
    for key in ("out_indices", "out_features"):
        if key in kwargs:
            setattr(config, key, kwargs.pop(key))
    return config


def register() -> None:
    """Register model type ``fit3d`` with transformers' auto classes (idempotent)."""
    AutoConfig.register(MODEL_TYPE, FiT3DConfig, exist_ok=True)
    AutoModel.register(FiT3DConfig, FiT3DModel, exist_ok=True)
    AutoBackbone.register(FiT3DConfig, FiT3DBackbone, exist_ok=True)
    AutoImageProcessor.register(FiT3DConfig, image_processor_classes={
        "pil": FiT3DImageProcessor, "torchvision": FiT3DImageProcessor}, exist_ok=True)
    _patch_auto(AutoBackbone, FiT3DBackbone.from_pretrained)
    _patch_auto(AutoModel, FiT3DModel.from_pretrained)
    _patch_auto(AutoImageProcessor, FiT3DImageProcessor.from_pretrained)
    _patch_auto(AutoConfig, _config_from_pretrained)


register()
