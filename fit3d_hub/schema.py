"""The repo format's schema: file names, config.json's fields and its typed ``fit3d`` block.

A repo (local directory or hub model repo) holds ``config.json`` (timm's ``architecture``,
``model_args``, ``pretrained_cfg``, plus the ``fit3d`` block below), ``model.safetensors``
(the fine-tuned backbone), optionally ``base.safetensors`` (the original) and ``README.md``.
Reading lives here; writing and validation in :mod:`fit3d_hub.repo_format`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from fit3d_hub.errors import RepoFormatError
from fit3d_hub.jsonio import read_json_object
from fit3d_hub.methods import DEFAULT_METHOD, METHODS

CONFIG_NAME = "config.json"
MODEL_TYPE = "fit3d"
"""config.json's ``model_type``: transformers' name for FiT3D repos."""
WEIGHTS_NAME = "model.safetensors"
BASE_WEIGHTS_NAME = "base.safetensors"
REFINE_WEIGHTS_NAME = "refine.safetensors"
GMAE_DECODER_NAME = "gmae_decoder.safetensors"
CARD_NAME = "README.md"
WRITE_ID_KEY = "fit3d_write_id"
"""config.json's key, and every weights file's header metadata key, holding the id of the
save that wrote them: files of two saves do not load together."""
FORMAT_VERSION = 1

MODES = ("concat", "finetuned", "original")
"""What a FiT3D model returns, and the feature variants every evaluation reports:
``[original | fine-tuned]`` concatenated on channels, or one branch."""
FUSIONS = ("concat",)


def statistics(value: Any, name: str, where: str) -> tuple[float, ...]:
    """Normalisation statistics (field ``name`` of ``where``): 3 finite numbers, each above
    0 for a ``std``; anything else is one :class:`RepoFormatError` line."""
    std = name.endswith("std")
    if not (isinstance(value, list) and len(value) == 3
            and all(isinstance(v, (int, float)) and math.isfinite(v) and (v > 0 or not std)
                    for v in value)):
        raise RepoFormatError(f"{where}: field '{name}' must be 3 finite numbers"
                              f"{', each above 0' if std else ''}; got {value!r}")
    return tuple(float(v) for v in value)


@dataclass
class BaseRef:
    """Where the original (base) weights of a repo live on the hub."""

    repo_id: str
    filename: str = WEIGHTS_NAME
    revision: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"repo_id": self.repo_id, "filename": self.filename, "revision": self.revision}

    @classmethod
    def from_json(cls, raw: Any, where: str) -> BaseRef:
        if not isinstance(raw, dict):
            raise RepoFormatError(f"{where}: field 'fit3d.base' must be an object or null")
        if not isinstance(raw.get("repo_id"), str):
            raise RepoFormatError(f"{where}: field 'fit3d.base.repo_id' must be a str; got "
                                  f"{type(raw.get('repo_id')).__name__}")
        unknown = set(raw) - {"repo_id", "filename", "revision"}
        if unknown:
            raise RepoFormatError(f"{where}: unknown keys in 'fit3d.base': {sorted(unknown)}")
        filename = raw.get("filename") or WEIGHTS_NAME
        parts = filename.split("/") if isinstance(filename, str) else []
        if not parts or filename.startswith("/") or "\\" in filename or \
                any(p in ("", ".", "..") for p in parts):
            raise RepoFormatError(f"{where}: field 'fit3d.base.filename' must be a file path "
                                  f"inside the hub repo; got {filename!r}")
        revision = raw.get("revision")
        if revision is not None and not isinstance(revision, str):
            raise RepoFormatError(f"{where}: field 'fit3d.base.revision' must be a str or "
                                  f"null; got {type(revision).__name__}")
        return cls(raw["repo_id"], filename, revision)


@dataclass
class RefineSpec:
    """A convolution applied to the fine-tuned branch's patch-feature map (the equivariance
    method's 3x3 "refine conv"): ``Conv2d(C, C, kernel_size, padding=kernel_size // 2)``,
    weights ``weight``/``bias`` in ``filename``."""

    kernel_size: int = 3
    filename: str = REFINE_WEIGHTS_NAME

    def to_json(self) -> dict[str, Any]:
        return {"kernel_size": self.kernel_size, "filename": self.filename}

    @classmethod
    def from_json(cls, raw: Any, where: str) -> RefineSpec:
        if not isinstance(raw, dict):
            raise RepoFormatError(f"{where}: field 'fit3d.refine' must be an object or null")
        unknown = set(raw) - {"kernel_size", "filename"}
        if unknown:
            raise RepoFormatError(f"{where}: unknown keys in 'fit3d.refine': {sorted(unknown)}")
        kernel = raw.get("kernel_size", 3)
        if not isinstance(kernel, int) or isinstance(kernel, bool) or kernel < 1 or kernel % 2 == 0:
            raise RepoFormatError(f"{where}: field 'fit3d.refine.kernel_size' must be an odd "
                                  f"positive int; got {kernel!r}")
        filename = raw.get("filename", REFINE_WEIGHTS_NAME)
        if not isinstance(filename, str) or not filename.endswith(".safetensors") \
                or "/" in filename:
            raise RepoFormatError(f"{where}: field 'fit3d.refine.filename' must name a "
                                  f".safetensors file in the repo; got {filename!r}")
        return cls(kernel, filename)


@dataclass
class GmaeSpec:
    """A GMAE repo's decoder (``fit3d.gmae``): which one, its shape and its file, and the
    rendering settings the zero-shot outputs need."""

    decoder: str = "gaussians"
    """``gaussians`` (GMAE) or ``pixels`` (MAE's, the baseline)."""
    filename: str = GMAE_DECODER_NAME
    num_gaussians: int = 256
    dim: int = 512
    depth: int = 8
    heads: int = 16
    scale_factor: float = 1.0
    image_size: int = 224
    mask_ratio: float = 0.75

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, raw: Any, where: str) -> GmaeSpec:
        if not isinstance(raw, dict):
            raise RepoFormatError(f"{where}: field 'fit3d.gmae' must be an object")
        known = {f.name: f for f in fields(cls)}
        unknown = set(raw) - set(known)
        if unknown:
            raise RepoFormatError(f"{where}: unknown keys in 'fit3d.gmae': {sorted(unknown)}")
        values = {**cls().to_json(), **raw}
        if values["decoder"] not in ("gaussians", "pixels"):
            raise RepoFormatError(f"{where}: field 'fit3d.gmae.decoder' must be 'gaussians' or "
                                  f"'pixels'; got {values['decoder']!r}")
        for key in ("num_gaussians", "dim", "depth", "heads", "image_size"):
            v = values[key]
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise RepoFormatError(f"{where}: field 'fit3d.gmae.{key}' must be a positive "
                                      f"int; got {v!r}")
        if values["dim"] % values["heads"]:
            raise RepoFormatError(f"{where}: field 'fit3d.gmae.heads' ({values['heads']}) must "
                                  f"divide 'fit3d.gmae.dim' ({values['dim']})")
        for key in ("scale_factor", "mask_ratio"):
            if not isinstance(values[key], (int, float)) or not 0 < values[key] < float("inf"):
                raise RepoFormatError(f"{where}: field 'fit3d.gmae.{key}' must be a positive "
                                      f"number; got {values[key]!r}")
        name = values["filename"]
        if not isinstance(name, str) or not name.endswith(".safetensors") or "/" in name:
            raise RepoFormatError(f"{where}: field 'fit3d.gmae.filename' must name a "
                                  f".safetensors file in the repo; got {name!r}")
        return cls(**values)


@dataclass
class Fit3DBlock:
    """config.json's ``fit3d`` block: what to pair the weights with and how to read them."""

    name: str | None = None
    """Registry name the repo stands for, if any."""
    base_model: str | None = None
    """timm id (with tag) of the original weights."""
    base: BaseRef | None = None
    """Hub location of the original weights; None when the repo embeds them."""
    method: str = DEFAULT_METHOD
    """The 3D-aware method that produced the weights (a name of
    :data:`fit3d_hub.methods.METHODS`)."""
    refine: RefineSpec | None = None
    """A conv the fine-tuned branch's final feature map goes through (equivariance method)."""
    gmae: GmaeSpec | None = None
    """The decoder of a GMAE repo (one branch: the encoder)."""
    layer: int = -1
    """Block whose tokens are the features (-1: the last)."""
    norm: bool = True
    """Whether the final norm is applied to them."""
    fusion: str = "concat"
    patch_size: int | None = None
    embed_dim: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    training: dict[str, Any] = field(default_factory=dict)
    """Provenance: who trained the weights, on what, with which settings."""
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)
    """Keys a newer fit3d-hub wrote; kept so a round trip loses nothing."""

    def to_json(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        out["base"] = self.base.to_json() if self.base else None
        out["refine"] = self.refine.to_json() if self.refine else None
        out["gmae"] = self.gmae.to_json() if self.gmae else None
        for key in ("mean", "std"):
            out[key] = list(out[key]) if out[key] is not None else None
        return {**out, **self.extra}

    @classmethod
    def from_json(cls, raw: dict[str, Any], where: str) -> Fit3DBlock:
        """Parse and check a ``fit3d`` block; errors name the file and the field."""
        known = {f.name for f in fields(cls)} - {"extra"}
        types = {"name": str, "base_model": str, "method": str, "layer": int, "norm": bool,
                 "fusion": str, "patch_size": int, "embed_dim": int, "training": dict,
                 "format_version": int}
        values: dict[str, Any] = {}
        for key, kind in types.items():
            value = raw.get(key)
            if value is None:
                continue
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise RepoFormatError(f"{where}: field 'fit3d.{key}' must be a {kind.__name__}; "
                                      f"got {type(value).__name__}")
            values[key] = value
        for key in ("mean", "std"):
            value = raw.get(key)
            if value is None:
                continue
            values[key] = statistics(value, f"fit3d.{key}", where)
        if raw.get("base") is not None:
            values["base"] = BaseRef.from_json(raw["base"], where)
        if raw.get("refine") is not None:
            values["refine"] = RefineSpec.from_json(raw["refine"], where)
        if raw.get("gmae") is not None:
            values["gmae"] = GmaeSpec.from_json(raw["gmae"], where)
        if values.get("method", DEFAULT_METHOD) not in METHODS:
            raise RepoFormatError(f"{where}: field 'fit3d.method' is {values['method']!r}; this "
                                  f"fit3d-hub knows {', '.join(METHODS)} (upgrade fit3d-hub?)")
        if values.get("fusion", "concat") not in FUSIONS:
            raise RepoFormatError(f"{where}: field 'fit3d.fusion' is {values['fusion']!r}; this "
                                  f"fit3d-hub serves {', '.join(FUSIONS)}")
        block = cls(**values, extra={k: v for k, v in raw.items() if k not in known})
        return block


@dataclass
class RepoConfig:
    """A parsed config.json."""

    architecture: str
    model_args: dict[str, Any]
    pretrained_cfg: dict[str, Any]
    fit3d: Fit3DBlock = field(default_factory=Fit3DBlock)
    source: str = field(default=CONFIG_NAME, compare=False)
    """The file it was read from, for error messages."""
    write_id: str | None = field(default=None, compare=False)
    """The save that wrote the repo (``None``: written before fit3d-hub stamped saves)."""

    @property
    def base(self) -> BaseRef | None:
        return self.fit3d.base

    @property
    def name(self) -> str | None:
        return self.fit3d.name


def read_config(path: str | Path) -> RepoConfig:
    """Parse and check a repo's config.json; errors name the file and the field."""
    path = Path(path)
    raw = read_json_object(path, missing=f"missing; a FiT3D repo needs {CONFIG_NAME}")
    architecture = raw.get("architecture")
    if not isinstance(architecture, str):
        raise RepoFormatError(f"{path}: field 'architecture' must be a str; got "
                              f"{type(architecture).__name__}")
    model_args = raw.get("model_args") or {}
    pretrained_cfg = raw.get("pretrained_cfg") or {}
    if not isinstance(model_args, dict):
        raise RepoFormatError(f"{path}: field 'model_args' must be an object")
    if not isinstance(pretrained_cfg, dict):
        raise RepoFormatError(f"{path}: field 'pretrained_cfg' must be an object")
    for key in ("mean", "std"):  # what timm's data config (and ours, as a fallback) reads
        if pretrained_cfg.get(key) is not None:
            statistics(pretrained_cfg[key], f"pretrained_cfg.{key}", str(path))
    if "fit3d" not in raw:
        raise RepoFormatError(f"{path}: no 'fit3d' block: this is a plain timm repo, not a "
                              "FiT3D repo (load it with timm.create_model)")
    if not isinstance(raw["fit3d"], dict):
        raise RepoFormatError(f"{path}: field 'fit3d' must be a dict; got "
                              f"{type(raw['fit3d']).__name__}")
    return RepoConfig(architecture, model_args, pretrained_cfg,
                      Fit3DBlock.from_json(raw["fit3d"], str(path)), source=str(path),
                      write_id=raw.get(WRITE_ID_KEY) if isinstance(raw.get(WRITE_ID_KEY), str)
                      else None)
