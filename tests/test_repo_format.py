"""save_pretrained / load_fit3d round trips through directories and cached hub repos."""

from __future__ import annotations

import json
import re

import pytest
import timm
import torch
from helpers import by_hand, put_in_cache
from huggingface_hub import constants as hf_constants

import fit3d_hub.weights as weights
from fit3d_hub import FiT3D, NotCachedError, RepoFormatError, load_fit3d
from fit3d_hub.backbone import create_vit
from fit3d_hub.registry import IMAGENET_MEAN, IMAGENET_STD, REGISTRY, registry_config
from fit3d_hub.repo_format import validate_repo
from fit3d_hub.schema import read_config

X = torch.randn(1, 3, 28, 28)


def _files(directory):
    return sorted(p.name for p in directory.iterdir())


def test_round_trip_self_contained(tiny_pair, tmp_path):
    model = FiT3D(*tiny_pair)
    model.save_pretrained(tmp_path / "repo")
    assert _files(tmp_path / "repo") == ["README.md", "base.safetensors", "config.json",
                                         "model.safetensors"]
    loaded = load_fit3d(tmp_path / "repo")
    with torch.no_grad():
        torch.testing.assert_close(loaded(X), by_hand(*tiny_pair, X), rtol=0, atol=0)


def test_config_is_timm_format_plus_fit3d_block(tiny_pair, tmp_path):
    FiT3D(*tiny_pair).save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    assert raw["architecture"] == "vit_small_patch14_dinov2"
    assert raw["num_features"] == 32
    assert raw["model_args"]["embed_dim"] == 32 and raw["model_args"]["depth"] == 2
    assert raw["pretrained_cfg"]["mean"] == [0.485, 0.456, 0.406]
    fit3d = raw["fit3d"]
    assert fit3d["base"] is None and fit3d["fusion"] == "concat" and fit3d["layer"] == -1
    assert fit3d["patch_size"] == 14 and fit3d["embed_dim"] == 32 and fit3d["norm"] is True


def test_finetuned_backbone_loads_with_plain_timm(tiny_pair, tmp_path):
    FiT3D(*tiny_pair).save_pretrained(tmp_path)
    vit = timm.create_model(f"local-dir:{tmp_path}", pretrained=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(vit.forward_features(X), tiny_pair[1].forward_features(X))


def test_hub_reference_instead_of_embedded_base(hub_cache, tiny_pair, tmp_path):
    model = load_fit3d("tiny_dinov2", cache_dir=hub_cache)
    out = tmp_path / "repo"
    (out).mkdir()
    (out / "base.safetensors").write_bytes(b"stale")  # must not shadow the hub reference
    model.save_pretrained(out)
    assert _files(out) == ["README.md", "config.json", "model.safetensors"]
    assert read_config(out / "config.json").base.repo_id == "timm/vit_small_patch14_dinov2.lvd142m"
    loaded = load_fit3d(out, cache_dir=hub_cache)
    with torch.no_grad():
        torch.testing.assert_close(loaded(X), by_hand(*tiny_pair, X), rtol=0, atol=0)
    # Without the cached base, offline loading says what is missing and how to get it.
    expected = re.escape("timm/vit_small_patch14_dinov2.lvd142m:model")
    with pytest.raises(NotCachedError, match=expected):
        load_fit3d(out, cache_dir=tmp_path / "empty")


def test_hub_repo_from_cache_with_embedded_base(tiny_pair, tmp_path):
    FiT3D(*tiny_pair).save_pretrained(tmp_path / "repo")
    files = {p.name: p for p in (tmp_path / "repo").iterdir()}
    cache = tmp_path / "cache"
    commit = put_in_cache(cache, "someone/fit3d-tiny", files)
    for revision in (None, "main", commit):
        loaded = load_fit3d("someone/fit3d-tiny", cache_dir=cache, revision=revision)
        with torch.no_grad():
            torch.testing.assert_close(loaded(X), by_hand(*tiny_pair, X), rtol=0, atol=0)


def test_hub_repo_with_base_reference(hub_cache, tiny_pair, tmp_path):
    load_fit3d("tiny_dinov2", cache_dir=hub_cache).save_pretrained(tmp_path / "repo")
    files = {p.name: p for p in (tmp_path / "repo").iterdir()}
    put_in_cache(hub_cache, "someone/fit3d-ref", files)
    loaded = load_fit3d("someone/fit3d-ref", cache_dir=hub_cache)
    with torch.no_grad():
        torch.testing.assert_close(loaded(X), by_hand(*tiny_pair, X), rtol=0, atol=0)


def test_single_branch_models_save_what_they_can(hub_cache, tmp_path):
    original_only = load_fit3d("tiny_dinov2", cache_dir=hub_cache, mode="original")
    with pytest.raises(RepoFormatError, match="without its fine-tuned backbone"):
        original_only.save_pretrained(tmp_path / "a")
    finetuned_only = load_fit3d("tiny_dinov2", cache_dir=hub_cache, mode="finetuned")
    with pytest.raises(RepoFormatError, match="without its original backbone"):
        finetuned_only.save_pretrained(tmp_path / "b", include_base=True)
    finetuned_only.save_pretrained(tmp_path / "c")
    assert validate_repo(tmp_path / "c").base is not None


def test_interrupted_save_keeps_the_old_repo(tiny_pair, tmp_path, monkeypatch):
    FiT3D(*tiny_pair).save_pretrained(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(weights, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        FiT3D(tiny_pair[1], tiny_pair[0]).save_pretrained(tmp_path)
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert after == before  # no half-written file, no temporary left behind


@pytest.mark.parametrize("text, field", [
    ("{not json", "malformed JSON"),
    ("[]", "JSON object"),
    ('{"fit3d": {}}', "'architecture' must be a str"),
    ('{"architecture": "vit_small_patch14_dinov2"}', "no 'fit3d' block"),
    ('{"architecture": "x", "fit3d": {"base": {"filename": "m"}}}', "'fit3d.base.repo_id'"),
    ('{"architecture": "x", "model_args": [1], "fit3d": {}}', "'model_args' must be an object"),
])
def test_malformed_config_names_file_and_field(tmp_path, text, field):
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(RepoFormatError) as err:
        load_fit3d(tmp_path)
    assert str(tmp_path / "config.json") in str(err.value) and field in str(err.value)


def test_validate_repo_catches_missing_and_corrupt_weights(tiny_pair, tmp_path):
    FiT3D(*tiny_pair).save_pretrained(tmp_path)
    validate_repo(tmp_path)
    (tmp_path / "base.safetensors").write_bytes(b"\x00" * 16)
    expected = re.escape("base.safetensors: not a readable safetensors")
    with pytest.raises(RepoFormatError, match=expected):
        validate_repo(tmp_path)
    (tmp_path / "base.safetensors").unlink()
    with pytest.raises(RepoFormatError, match=re.escape("'fit3d.base' is null")):
        validate_repo(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(RepoFormatError, match=re.escape("model.safetensors: missing")):
        validate_repo(tmp_path)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_plain_timm_sees_the_statistics_the_weights_were_trained_with(name, tmp_path,
                                                                      monkeypatch):
    """Every backbone is fine-tuned on images normalised with the statistics its registry
    entry names (ImageNet for FiT3D's, CLIP included, whose timm config says CLIP's; CLIP's
    for the equivariance authors' CLIP); a saved or pushed repo says so to timm's data
    config."""
    spec = REGISTRY[name]
    small = {"embed_dim": 24, "depth": 1, "num_heads": 2}
    pair = [create_vit(spec.base_model, small) for _ in range(2)]
    model = FiT3D(*pair)
    model.fit3d_block = registry_config(spec).fit3d
    model.save_pretrained(tmp_path / "repo", include_base=True)
    expected = {"mean": spec.mean, "std": spec.std}
    assert expected == {"mean": IMAGENET_MEAN, "std": IMAGENET_STD} or \
        name == "clip_base.equivariance"
    local = timm.create_model(f"local-dir:{tmp_path / 'repo'}")
    got = timm.data.resolve_model_data_config(local)
    assert {k: tuple(got[k]) for k in expected} == expected
    # the same config.json as a hub repo (what `fit3d-hub push` uploads), read by timm
    cache = tmp_path / "cache"
    put_in_cache(cache, "someone/fit3d-x", {n: tmp_path / "repo" / n for n in
                                            ("config.json", "model.safetensors")})
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    hub = timm.create_model("hf-hub:someone/fit3d-x")
    got = timm.data.resolve_model_data_config(hub)
    assert {k: tuple(got[k]) for k in expected} == expected
    # and load_fit3d's branches carry them in timm's pretrained_cfg too
    loaded = load_fit3d(tmp_path / "repo")
    for vit in (loaded.original, loaded.finetuned):
        got = timm.data.resolve_model_data_config(vit)
        assert {k: tuple(got[k]) for k in expected} == expected


def test_layer_and_norm_in_config_are_honoured(tiny_pair, tmp_path):
    model = FiT3D(*tiny_pair, layer=0, norm=False)
    model.save_pretrained(tmp_path / "repo")
    block = read_config(tmp_path / "repo" / "config.json").fit3d
    assert (block.layer, block.norm, block.fusion) == (0, False, "concat")
    loaded = load_fit3d(tmp_path / "repo")
    assert (loaded.layer, loaded.norm) == (0, False)
    with torch.no_grad():
        expected = [vit.forward_intermediates(X, indices=[0], norm=False,
                                              intermediates_only=True)[0] for vit in tiny_pair]
        torch.testing.assert_close(loaded(X), torch.cat(expected, dim=1))
        assert not torch.allclose(loaded(X), by_hand(*tiny_pair, X))
    raw = json.loads((tmp_path / "repo" / "config.json").read_text())
    raw["fit3d"]["fusion"] = "sum"
    (tmp_path / "repo" / "config.json").write_text(json.dumps(raw))
    with pytest.raises(RepoFormatError, match="'fit3d.fusion' is 'sum'"):
        load_fit3d(tmp_path / "repo")


def test_fit3d_block_round_trips_unknown_keys(tiny_pair, tmp_path):
    model = FiT3D(*tiny_pair)
    model.save_pretrained(tmp_path / "repo")
    raw = json.loads((tmp_path / "repo" / "config.json").read_text())
    raw["fit3d"]["from_the_future"] = {"x": 1}
    (tmp_path / "repo" / "config.json").write_text(json.dumps(raw))
    loaded = load_fit3d(tmp_path / "repo")
    loaded.save_pretrained(tmp_path / "again", include_base=True)
    again = json.loads((tmp_path / "again" / "config.json").read_text())
    assert again["fit3d"]["from_the_future"] == {"x": 1}
