"""Turning the authors' released ``.pth`` checkpoints into the repo format."""

from __future__ import annotations

from pathlib import Path

from fit3d_hub.backbone import classifier_prefixes, create_vit
from fit3d_hub.errors import RepoFormatError
from fit3d_hub.loading import registry_config
from fit3d_hub.model import FiT3D
from fit3d_hub.registry import get_spec
from fit3d_hub.repo_format import CONFIG_NAME
from fit3d_hub.weights import drop_prefixes, load_strict, read_state_dict


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
    finetuned = create_vit(spec.base_model, spec.model_args)
    load_strict(finetuned, read_state_dict(source), str(source))
    original = None
    if base is not None:
        original = create_vit(spec.base_model, spec.model_args)
        state = drop_prefixes(read_state_dict(base), classifier_prefixes(original))
        load_strict(original, state, str(base))
    model = FiT3D(original, finetuned, mode="concat" if original is not None else "finetuned")
    model.fit3d_config = dict(registry_config(spec).fit3d)
    model.fit3d_config["training"] = {"release": "authors", "source": Path(source).name,
                                      "converted_by": "fit3d-hub convert"}
    return model.save_pretrained(output, include_base=original is not None)
