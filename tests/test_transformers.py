"""FiT3D repos through transformers' auto classes and pipeline, offline, on tiny models."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from helpers import put_in_cache, tiny_vit
from PIL import Image

import fit3d_hub
from fit3d_hub import FiT3D, RepoFormatError, get_transform, load_fit3d

transformers = pytest.importorskip("transformers")
from transformers import (  # noqa: E402
    AutoBackbone,
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    pipeline,
)

ROOT = Path(__file__).resolve().parents[1]
X = torch.randn(2, 3, 28, 42)
DEPTH = 4


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tf") / "my-fit3d"
    FiT3D(tiny_vit(0, depth=DEPTH), tiny_vit(1, depth=DEPTH)).save_pretrained(path)
    return path


def test_config_json_names_the_model_type_and_still_loads_with_timm(repo):
    raw = json.loads((repo / "config.json").read_text())
    assert raw["model_type"] == "fit3d"
    vit = timm.create_model(f"local-dir:{repo}", pretrained=True)
    with torch.no_grad():
        torch.testing.assert_close(vit.forward_features(X),
                                   load_fit3d(repo).finetuned.forward_features(X))
    config = AutoConfig.from_pretrained(repo)
    assert type(config).__name__ == "FiT3DConfig"
    assert config.num_hidden_layers == DEPTH and config.hidden_size == 64
    assert config.stage_names == ["stem", "stage1", "stage2", "stage3", "stage4"]


def test_auto_model_gives_load_fit3d_numbers(repo):
    model = AutoModel.from_pretrained(repo)
    ref = load_fit3d(repo)
    with torch.no_grad():
        out = model(pixel_values=X, output_hidden_states=True)
        feats = ref.forward_features(X)
    tokens = out.last_hidden_state
    assert tokens.shape == (2, 1 + 6, 64)
    grid = tokens[:, 1:].unflatten(1, (2, 3)).permute(0, 3, 1, 2)
    torch.testing.assert_close(grid, feats.features, rtol=1e-6, atol=1e-6)
    cls = torch.cat([ref.original.forward_features(X)[:, 0],
                     ref.finetuned.forward_features(X)[:, 0]], dim=-1)
    torch.testing.assert_close(out.pooler_output, cls, rtol=1e-6, atol=1e-6)
    assert len(out.hidden_states) == DEPTH + 1
    raw = ref.forward_intermediates(X, indices=[DEPTH - 1], output_fmt="NLC",
                                    intermediates_only=True)[0]
    torch.testing.assert_close(out.hidden_states[-1][:, 1:], raw, rtol=1e-6, atol=1e-6)
    one = AutoModel.from_pretrained(repo, mode="finetuned")
    assert one.fit3d.mode == "finetuned" and one.fit3d.original is None
    assert one(pixel_values=X).last_hidden_state.shape[-1] == 32


def test_auto_model_from_a_hub_repo_in_the_cache_offline(repo, tmp_path):
    cache = tmp_path / "hub"
    put_in_cache(cache, "me/fit3d-tiny", {p.name: p for p in repo.iterdir() if p.is_file()})
    model = AutoModel.from_pretrained("me/fit3d-tiny", cache_dir=cache)
    backbone = AutoBackbone.from_pretrained("me/fit3d-tiny", cache_dir=cache, out_indices=[2])
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values=X).last_hidden_state,
                                   AutoModel.from_pretrained(repo)(pixel_values=X)
                                   .last_hidden_state)
        assert backbone(X).feature_maps[0].shape == (2, 64, 2, 3)


def test_auto_backbone_feature_maps_are_forward_intermediates(repo):
    backbone = AutoBackbone.from_pretrained(repo, out_indices=[1, 3, 4])
    assert type(backbone).__name__ == "FiT3DBackbone"
    assert backbone.channels == [64, 64, 64]
    ref = load_fit3d(repo)
    with torch.no_grad():
        maps = backbone(pixel_values=X).feature_maps
        expected = ref.forward_intermediates(X, indices=[0, 2, 3], norm=True,
                                             intermediates_only=True)
    assert len(maps) == 3
    for got, want in zip(maps, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    tokens = AutoBackbone.from_pretrained(repo, out_indices=[0, 4], reshape_hidden_states=False)
    with torch.no_grad():
        stem, last = tokens(pixel_values=X).feature_maps
    assert stem.shape == last.shape == (2, 1 + 6, 64)
    torch.testing.assert_close(last[:, 1:].unflatten(1, (2, 3)).permute(0, 3, 1, 2),
                               expected[-1], rtol=1e-6, atol=1e-6)


def test_image_processor_is_get_transform(repo):
    processor = AutoImageProcessor.from_pretrained(repo)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (45, 61, 3), np.uint8))
    pixels = processor(image, return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, 42, 56)
    torch.testing.assert_close(pixels[0], get_transform(repo)(image))
    resized = processor(image, size=28, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(resized[0], get_transform(repo, size=28)(image))


def test_feature_extraction_pipeline(repo):
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (28, 42, 3), np.uint8))
    extractor = pipeline("image-feature-extraction", model=str(repo))
    got = extractor(image, return_tensors=True)
    model = AutoModel.from_pretrained(repo)
    pixels = AutoImageProcessor.from_pretrained(repo)(image)["pixel_values"]
    with torch.no_grad():
        torch.testing.assert_close(got, model(pixel_values=pixels).last_hidden_state)


def test_saving_through_transformers_keeps_the_repo_format(repo, tmp_path):
    AutoModel.from_pretrained(repo).save_pretrained(tmp_path / "again")
    with torch.no_grad():
        torch.testing.assert_close(load_fit3d(tmp_path / "again")(X), load_fit3d(repo)(X))


def test_a_plain_timm_repo_is_refused_in_one_line(tmp_path):
    plain = tmp_path / "plain"
    from timm.models._hub import save_for_hf

    save_for_hf(tiny_vit(0), str(plain))
    with pytest.raises(RepoFormatError, match=r"plain timm repo") as err:
        fit3d_hub.hf_transformers.FiT3DModel.from_pretrained(plain)
    assert "\n" not in str(err.value)
    # transformers itself still reads it as its timm wrapper's: not ours to take
    assert type(AutoConfig.from_pretrained(plain)).__name__ == "TimmWrapperConfig"


def test_out_of_range_out_indices_name_the_stages(repo):
    with pytest.raises(ValueError, match=re.escape("stage4")):
        AutoBackbone.from_pretrained(repo, out_indices=[7])


def test_without_transformers_the_module_says_how_to_install_it():
    code = ("import sys; sys.modules['transformers'] = None\n"
            "import fit3d_hub\n"
            "try:\n    import fit3d_hub.hf_transformers\n"
            "except ImportError as err:\n    print(err)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert 'pip install "fit3d-hub[transformers]"' in proc.stdout
    assert len(proc.stdout.strip().splitlines()) == 1


def _example(name: str) -> str:
    text = (ROOT / "README.md").read_text()
    block = re.search(rf"<!-- example: {name} -->\n```python\n(.*?)```", text, re.S)
    assert block, f"README has no example {name!r}"
    return block.group(1)


@pytest.mark.parametrize("name", ["segmentation", "dpt"])
def test_readme_examples_run(name, tmp_path, monkeypatch):
    """The README's examples, run as written on a 12-block tiny repo named my-fit3d."""
    FiT3D(tiny_vit(0, depth=12), tiny_vit(1, depth=12)).save_pretrained(tmp_path / "my-fit3d")
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (230, 240, 3), np.uint8)).save(
        tmp_path / "room.jpg")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    with torch.no_grad():
        exec(compile(_example(name), f"README:{name}", "exec"), scope)
    if name == "segmentation":
        assert scope["logits"].shape == (1, 21, 224, 238)
    else:
        assert scope["depth"].shape[0] == 1 and scope["depth"].ndim == 3
        assert torch.isfinite(scope["depth"]).all()


def test_auto_classes_and_pipeline_take_registry_names(tiny_spec, hub_cache):
    """A registry name (here the tiny FiT3D release in a hub cache) goes through every auto
    class and the pipeline, offline, to load_fit3d's numbers."""
    name, hub = tiny_spec.name, {"cache_dir": hub_cache}
    assert type(AutoConfig.from_pretrained(name, **hub)).__name__ == "FiT3DConfig"
    model = AutoModel.from_pretrained(name, **hub)
    ref = load_fit3d(name, **hub)
    with torch.no_grad():
        grid = model(pixel_values=X).last_hidden_state[:, 1:].unflatten(1, (2, 3))
        torch.testing.assert_close(grid.permute(0, 3, 1, 2), ref(X), rtol=1e-6, atol=1e-6)
        maps = AutoBackbone.from_pretrained(name, out_indices=[2], **hub)(pixel_values=X)
    assert maps.feature_maps[0].shape == (2, 64, 2, 3)
    assert AutoImageProcessor.from_pretrained(name, **hub).patch_size == 14
    image = Image.fromarray(np.random.default_rng(2).integers(0, 255, (28, 42, 3), np.uint8))
    got = pipeline("image-feature-extraction", model=name, model_kwargs=hub)(
        image, return_tensors=True)
    assert got.shape == (1, 7, 64)
