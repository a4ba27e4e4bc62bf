"""Other authors' releases load by name, offline, from stand-ins in their exact file layouts
laid out as a Hugging Face cache: the equivariance authors' Lightning checkpoints (merged
once, then cached as a repo) and Splat-and-Distill's DINOv2 state dicts (checked key by
key)."""

from __future__ import annotations

import re

import pytest
import torch
from helpers import (
    TINY_ARCH,
    TINY_ARGS,
    authors_equivariance_ckpt,
    equivariance_by_hand,
    put_in_cache,
    tiny_vit,
)

import fit3d_hub.releases as releases
from fit3d_hub import CheckpointError, NotCachedError, get_transform, load_fit3d
from fit3d_hub.registry import CLIP_MEAN, REGISTRY, BackboneSpec, get_spec
from fit3d_hub.schema import CONFIG_NAME, read_config

X = torch.randn(1, 3, 28, 42)


@pytest.fixture
def eq_spec(monkeypatch) -> BackboneSpec:
    spec = BackboneSpec(name="tiny_dinov2.equivariance", base_model=TINY_ARCH, patch_size=14,
                        embed_dim=32, license="apache-2.0", method="equivariance",
                        finetuned_repo="test-eq/3DCorrEnhance", finetuned_file="tiny.ckpt",
                        weights_format="equivariance_ckpt", model_args=dict(TINY_ARGS),
                        depth=2)
    monkeypatch.setitem(REGISTRY, spec.name, spec)
    return spec


@pytest.fixture
def snd_spec(monkeypatch) -> BackboneSpec:
    spec = BackboneSpec(name="tiny_dinov2.snd", base_model=TINY_ARCH, patch_size=14,
                        embed_dim=32, license="apache-2.0", method="snd",
                        finetuned_repo="test-snd/SnD", finetuned_file="tiny_snd.pth",
                        weights_format="dinov2_state_dict", model_args=dict(TINY_ARGS), depth=2)
    monkeypatch.setitem(REGISTRY, spec.name, spec)
    return spec


def test_equivariance_release_loads_by_name_merged_once_then_from_the_cache(
        eq_spec, hub_cache, tiny_pair, tmp_path, monkeypatch):
    original, _ = tiny_pair
    source = authors_equivariance_ckpt(tmp_path / "tiny.ckpt", original, seed=3)
    put_in_cache(hub_cache, eq_spec.finetuned_repo, {"tiny.ckpt": source})
    model = load_fit3d(eq_spec.name, cache_dir=hub_cache)
    with torch.no_grad():
        expected = equivariance_by_hand(tiny_vit(0), source)(X)
        torch.testing.assert_close(model.forward_features(X).finetuned, expected,
                                   rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.forward_features(X).original,
                                   load_fit3d(eq_spec.name, mode="original",
                                              cache_dir=hub_cache)(X))
    assert model.fit3d_block.method == "equivariance" and model.refine is not None
    converted = list((hub_cache / ".fit3d-hub" / "converted" / eq_spec.name).iterdir())
    assert len(converted) == 1
    config = read_config(converted[0] / CONFIG_NAME)
    assert config.fit3d.training["source"] == "test-eq/3DCorrEnhance:tiny.ckpt"
    assert not (converted[0] / "base.safetensors").exists()  # points at timm's base file

    def no_pickles(*args, **kwargs):
        raise AssertionError("a cached release read a pickle")

    monkeypatch.setattr(releases, "read_pickle_object", no_pickles)
    again = load_fit3d(eq_spec.name, cache_dir=hub_cache)  # merged nothing, read safetensors
    with torch.no_grad():
        torch.testing.assert_close(again(X), model(X), rtol=0, atol=0)
    # a new revision of the release is a new cache entry, converted anew
    monkeypatch.undo()
    monkeypatch.setitem(REGISTRY, eq_spec.name, eq_spec)
    other = authors_equivariance_ckpt(tmp_path / "other.ckpt", original, seed=4)
    put_in_cache(hub_cache, eq_spec.finetuned_repo, {"tiny.ckpt": other}, revision="v2")
    newer = load_fit3d(eq_spec.name, cache_dir=hub_cache, revision="v2")
    assert len(list(converted[0].parent.iterdir())) == 2
    with torch.no_grad():
        assert not torch.allclose(newer(X), model(X))


def test_equivariance_release_offline_lists_every_missing_file(eq_spec, tmp_path):
    with pytest.raises(NotCachedError) as err:
        load_fit3d(eq_spec.name, cache_dir=tmp_path / "empty")
    assert set(err.value.missing) == {f"timm/{TINY_ARCH}:model.safetensors",
                                      "test-eq/3DCorrEnhance:tiny.ckpt"}
    assert f"fit3d-hub download {eq_spec.name}" in str(err.value)
    # the preprocessing needs no file at all
    assert get_transform(eq_spec.name).patch_size == 14


def test_equivariance_release_with_code_is_refused_in_one_line(eq_spec, hub_cache, tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("ran",))

    torch.save({"state_dict": Evil()}, tmp_path / "evil.ckpt")
    put_in_cache(hub_cache, eq_spec.finetuned_repo, {"tiny.ckpt": tmp_path / "evil.ckpt"})
    with pytest.raises(CheckpointError, match="refused to unpickle") as err:
        load_fit3d(eq_spec.name, cache_dir=hub_cache)
    assert "\n" not in str(err.value)


def _hub_format(vit: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A timm DINOv2's weights as torch.hub's DINOv2 names them (mask_token beside)."""
    state = dict(vit.state_dict())
    state["mask_token"] = torch.zeros(1, vit.embed_dim)
    return state


@pytest.mark.parametrize("layout", ["torch.hub", "timm"])
def test_snd_release_loads_by_name_in_either_key_layout(snd_spec, hub_cache, tmp_path, layout):
    released = tiny_vit(7)
    state = _hub_format(released) if layout == "torch.hub" else dict(released.state_dict())
    torch.save(state, tmp_path / "tiny_snd.pth")
    put_in_cache(hub_cache, snd_spec.finetuned_repo,
                 {snd_spec.finetuned_file: tmp_path / "tiny_snd.pth"})
    model = load_fit3d(snd_spec.name, mode="finetuned", cache_dir=hub_cache)
    with torch.no_grad():
        torch.testing.assert_close(model.finetuned.forward_features(X),
                                   released.forward_features(X), rtol=0, atol=0)
    assert model.fit3d_block.method == "snd"


@pytest.mark.parametrize("change, named", [
    (lambda s: s.pop("blocks.1.mlp.fc2.weight"), "missing keys: blocks.1.mlp.fc2.weight"),
    (lambda s: s.update({"head.weight": torch.zeros(3, 32)}), "unexpected keys: head.weight"),
    (lambda s: [s.update({f"base_model.model.{k}": s.pop(k)}) for k in list(s)],
     "unexpected keys: base_model.model."),
])
def test_snd_release_that_does_not_fit_names_the_file_and_keys(snd_spec, hub_cache, tmp_path,
                                                               change, named):
    state = _hub_format(tiny_vit(7))
    change(state)
    torch.save(state, tmp_path / "bad.pth")
    put_in_cache(hub_cache, snd_spec.finetuned_repo, {snd_spec.finetuned_file:
                                                      tmp_path / "bad.pth"})
    with pytest.raises(CheckpointError, match=re.escape(named)) as err:
        load_fit3d(snd_spec.name, cache_dir=hub_cache)
    assert snd_spec.finetuned_file in str(err.value) and "\n" not in str(err.value)


def test_registered_releases_name_their_authors_files():
    eq = get_spec("dinov2_base.equivariance")
    assert (eq.finetuned_repo, eq.finetuned_file) == ("qq456cvb/3DCorrEnhance",
                                                      "dinov2_base.ckpt")
    assert get_spec("clip_base.equivariance").mean == CLIP_MEAN  # their timm path: CLIP's
    assert get_spec("clip_base").mean != CLIP_MEAN  # FiT3D normalised CLIP with ImageNet's
    snd = get_spec("dinov2_small.snd_no_blending")
    assert (snd.method, snd.finetuned_file) == ("snd", "dinov2_small_snd_no_blending.pth")
    assert get_spec("dinov2_small") is get_spec("dinov2_small.fit3d")
    assert snd.base_name == "dinov2_small" and get_spec("dinov2_large").method is None


def test_readme_lists_the_registry():
    """The README's table is `fit3d-hub list --markdown` of every name."""
    from pathlib import Path

    from fit3d_hub.registry import list_models, registry_markdown

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = text.split("<!-- registry:start -->\n", 1)[1].split("\n<!-- registry:end -->", 1)[0]
    assert table == registry_markdown(list_models())
