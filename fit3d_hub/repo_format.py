"""The on-disk repo format: config.json (timm's + a ``fit3d`` block), safetensors, model card.

The same layout serves a local directory and a hub model repo, so ``timm.create_model
("hf-hub:<repo>")`` still loads the fine-tuned backbone alone from it.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fit3d_hub.errors import RepoFormatError
from fit3d_hub.jsonio import read_json_object
from fit3d_hub.weights import save_state_dict, write_text_atomic

if TYPE_CHECKING:
    from fit3d_hub.model import FiT3D

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
BASE_WEIGHTS_NAME = "base.safetensors"
CARD_NAME = "README.md"
FORMAT_VERSION = 1


@dataclass
class BaseRef:
    """Where the original (base) weights of a repo live on the hub."""

    repo_id: str
    filename: str = WEIGHTS_NAME
    revision: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"repo_id": self.repo_id, "filename": self.filename, "revision": self.revision}


@dataclass
class RepoConfig:
    """A parsed config.json."""

    architecture: str
    model_args: dict[str, Any]
    pretrained_cfg: dict[str, Any]
    fit3d: dict[str, Any] = field(default_factory=dict)

    @property
    def base(self) -> BaseRef | None:
        ref = self.fit3d.get("base")
        return BaseRef(**ref) if ref else None

    @property
    def name(self) -> str | None:
        return self.fit3d.get("name")


def read_config(path: str | Path) -> RepoConfig:
    """Parse and check a repo's config.json; errors name the file and the field."""
    path = Path(path)
    raw = read_json_object(path, missing=f"missing; a FiT3D repo needs {CONFIG_NAME}")

    def need(obj: dict, key: str, kind: type, where: str = "") -> Any:
        value = obj.get(key)
        if not isinstance(value, kind):
            label = f"{where}{key}"
            raise RepoFormatError(f"{path}: field {label!r} must be a {kind.__name__}; "
                                  f"got {type(value).__name__}")
        return value

    architecture = need(raw, "architecture", str)
    model_args = raw.get("model_args") or {}
    pretrained_cfg = raw.get("pretrained_cfg") or {}
    if not isinstance(model_args, dict):
        raise RepoFormatError(f"{path}: field 'model_args' must be an object")
    if not isinstance(pretrained_cfg, dict):
        raise RepoFormatError(f"{path}: field 'pretrained_cfg' must be an object")
    if "fit3d" not in raw:
        raise RepoFormatError(f"{path}: no 'fit3d' block: this is a plain timm repo, not a "
                              "FiT3D repo (load it with timm.create_model)")
    fit3d = need(raw, "fit3d", dict)
    base = fit3d.get("base")
    if base is not None:
        if not isinstance(base, dict):
            raise RepoFormatError(f"{path}: field 'fit3d.base' must be an object or null")
        need(base, "repo_id", str, "fit3d.base.")
        unknown = set(base) - {"repo_id", "filename", "revision"}
        if unknown:
            raise RepoFormatError(f"{path}: unknown keys in 'fit3d.base': {sorted(unknown)}")
    return RepoConfig(architecture, model_args, pretrained_cfg, fit3d)


def timm_config(vit: Any) -> dict[str, Any]:
    """timm's own config.json for ``vit`` (architecture, model_args, pretrained_cfg, ...)."""
    from timm.models._hub import save_config_for_hf

    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / CONFIG_NAME
        save_config_for_hf(vit, str(target))
        return json.loads(target.read_text())


def build_config(model: FiT3D) -> dict[str, Any]:
    """config.json for ``model``: timm's config of the fine-tuned backbone plus ``fit3d``."""
    config = timm_config(model.finetuned)
    stats = model.normalization
    fit3d = {
        "format_version": FORMAT_VERSION,
        "name": None,
        "base_model": None,
        "base": None,
        "layer": -1,
        "norm": True,
        "fusion": "concat",
        "patch_size": model.patch_size,
        "embed_dim": model.embed_dim,
        "mean": list(stats[0]),
        "std": list(stats[1]),
        "training": {},
    }
    fit3d.update({k: v for k, v in model.fit3d_config.items() if k in fit3d})
    # Plain timm (``resolve_model_data_config`` on "local-dir:" / "hf-hub:") must see the
    # statistics the weights were trained with: ImageNet for every backbone, CLIP included,
    # where timm's own pretrained_cfg would say CLIP's.
    config["pretrained_cfg"] = {**config.get("pretrained_cfg", {}), "mean": list(stats[0]),
                                "std": list(stats[1])}
    config["fit3d"] = fit3d
    return config


def save_repo(model: FiT3D, directory: Path, *, include_base: bool | None = None,
              card: str | None = None) -> Path:
    """Write ``model`` into ``directory`` in the repo format; each file is written atomically.

    Weights go first and config.json last, so a directory with a config is always whole.
    """
    if model.finetuned is None:
        raise RepoFormatError("nothing to save: this model was loaded without its fine-tuned "
                              "backbone (mode='original')")
    has_hub_base = bool(model.fit3d_config.get("base"))
    embed = (not has_hub_base) if include_base is None else include_base
    if embed and model.original is None:
        raise RepoFormatError("include_base=True, but this model was loaded without its "
                              "original backbone (mode='finetuned')")
    if not embed and not has_hub_base:
        raise RepoFormatError("the original weights have no hub source to point to; "
                              "save with include_base=True")
    directory.mkdir(parents=True, exist_ok=True)
    config = build_config(model)
    meta = {"format": "pt", "fit3d": "finetuned"}
    save_state_dict(model.finetuned.state_dict(), directory / WEIGHTS_NAME, metadata=meta)
    if embed:
        save_state_dict(model.original.state_dict(), directory / BASE_WEIGHTS_NAME,
                        metadata={"format": "pt", "fit3d": "original"})
    else:
        # A stale embedded base would win over the hub reference on load.
        (directory / BASE_WEIGHTS_NAME).unlink(missing_ok=True)
    write_text_atomic(directory / CONFIG_NAME, json.dumps(config, indent=2) + "\n")
    if card is None:
        from fit3d_hub.cards import render_card

        card = render_card(read_config(directory / CONFIG_NAME))
    write_text_atomic(directory / CARD_NAME, card)
    return directory


def validate_repo(directory: str | Path) -> RepoConfig:
    """Check that ``directory`` is a complete repo (before pushing it); returns its config."""
    from safetensors import SafetensorError, safe_open

    directory = Path(directory)
    if not directory.is_dir():
        raise RepoFormatError(f"{directory}: no such directory")
    config = read_config(directory / CONFIG_NAME)
    names = [WEIGHTS_NAME] + ([BASE_WEIGHTS_NAME] if (directory / BASE_WEIGHTS_NAME).exists()
                              else [])
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
    if BASE_WEIGHTS_NAME not in names and config.base is None:
        raise RepoFormatError(f"{directory}: has no {BASE_WEIGHTS_NAME} and config.json "
                              "'fit3d.base' is null: the original backbone cannot be found")
    return config
