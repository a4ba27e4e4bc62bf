"""timm's multi-layer contract on FiT3D, timm's data config of a FiT3D, and torch.hub."""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path

import pytest
import timm
import torch
from helpers import TINY_ARCH, TINY_ARGS, tiny_vit

from fit3d_hub import FiT3D, load_fit3d
from fit3d_hub.registry import REGISTRY

ROOT = Path(__file__).resolve().parents[1]
X = torch.randn(2, 3, 28, 42)
AUTHORS_HUBCONF = ("dinov2_small_fine", "dinov2_base_fine", "dinov2_reg_small_fine",
                   "clip_base_fine", "mae_base_fine", "deit3_base_fine")


def _pair(depth: int = 4, arch: str = TINY_ARCH):
    return tiny_vit(0, arch, depth=depth), tiny_vit(1, arch, depth=depth)


def _cat(a, b, axis):
    if isinstance(a, tuple):
        pairs = enumerate(zip(a, b, strict=True))
        return tuple(_cat(x, y, axis if i == 0 else -1) for i, (x, y) in pairs)
    return torch.cat([a, b], dim=axis)


@pytest.mark.parametrize("arch", [TINY_ARCH, "vit_small_patch14_reg4_dinov2.lvd142m"])
@pytest.mark.parametrize("kwargs", [
    {"indices": 2},
    {"indices": [0, 2], "norm": True},
    {"indices": [-1], "norm": False, "output_fmt": "NLC"},
    {"indices": 3, "return_prefix_tokens": True, "intermediates_only": True},
    {"indices": [1, 3], "norm": True, "stop_early": True, "intermediates_only": True},
])
def test_forward_intermediates_is_the_two_timm_calls_side_by_side(arch, kwargs):
    original, finetuned = _pair(arch=arch)
    model = FiT3D(original, finetuned)
    axis = 1 if kwargs.get("output_fmt", "NCHW") == "NCHW" else -1
    got = model.forward_intermediates(X, **kwargs)
    a = original.forward_intermediates(X, **kwargs)
    b = finetuned.forward_intermediates(X, **kwargs)
    if not kwargs.get("intermediates_only"):
        torch.testing.assert_close(got[0], torch.cat([a[0], b[0]], dim=-1), rtol=0, atol=0)
        got, a, b = got[1], a[1], b[1]
    assert len(got) == len(a)
    for g, x, y in zip(got, a, b, strict=True):
        expected = _cat(x, y, axis)
        if isinstance(expected, tuple):
            for gi, ei in zip(g, expected, strict=True):
                torch.testing.assert_close(gi, ei, rtol=0, atol=0)
        else:
            torch.testing.assert_close(g, expected, rtol=0, atol=0)


def test_forward_intermediates_dict_and_single_branch_modes():
    original, finetuned = _pair()
    model = FiT3D(original, finetuned)
    out = model.forward_intermediates(X, indices=[1], output_dict=True,
                                      return_prefix_tokens=True)
    ref = finetuned.forward_intermediates(X, indices=[1], output_dict=True,
                                          return_prefix_tokens=True)
    assert out.keys() == ref.keys()
    assert out["image_intermediates"][0].shape[1] == 2 * 32
    model.mode = "finetuned"
    one = model.forward_intermediates(X, indices=[1], intermediates_only=True)
    torch.testing.assert_close(one[0], ref["image_intermediates"][0], rtol=0, atol=0)
    # the default last-block features are one of the intermediates, normed
    model.mode = "concat"
    last, = model.forward_intermediates(X, indices=1, norm=True, intermediates_only=True)
    torch.testing.assert_close(last, model(X), rtol=1e-6, atol=1e-6)


def test_prune_intermediate_layers_keeps_what_is_asked_for():
    model = FiT3D(*_pair())
    before = model.forward_intermediates(X, indices=[1], intermediates_only=True)
    kept = model.prune_intermediate_layers([1], prune_norm=True)
    assert kept == [1]
    assert len(model.original.blocks) == len(model.finetuned.blocks) == 2
    after = model.forward_intermediates(X, indices=[1], intermediates_only=True)
    torch.testing.assert_close(after[0], before[0], rtol=0, atol=0)


@pytest.mark.parametrize("indices", [5, 0, [4], [-5], []])
def test_an_index_out_of_range_is_one_line_naming_it(indices):
    model = FiT3D(*_pair())
    with pytest.raises(ValueError, match=r"indices=.*4-block") as err:
        model.forward_intermediates(X, indices=indices)
    assert "\n" not in str(err.value)


def test_timm_data_config_of_a_fit3d_is_the_backbones(tmp_path):
    original, finetuned = _pair()
    model = FiT3D(original, finetuned)
    model.fit3d_block = replace(model.fit3d_block, mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2))
    config = timm.data.resolve_model_data_config(model)
    fallback = timm.data.resolve_model_data_config(torch.nn.Identity())  # 224, crop 0.875
    assert config["input_size"] == tuple(finetuned.pretrained_cfg["input_size"])
    assert config["input_size"] != fallback["input_size"]
    assert config["mean"] == (0.5, 0.5, 0.5) and config["std"] == (0.2, 0.2, 0.2)
    assert config["interpolation"] == "bilinear" and config["crop_pct"] == 1.0
    # and after a round trip through the repo format
    model.save_pretrained(tmp_path / "repo")
    loaded = load_fit3d(tmp_path / "repo")
    assert timm.data.resolve_model_data_config(loaded)["mean"] == (0.5, 0.5, 0.5)


def test_hubconf_offers_every_authors_name_and_fit3d():
    # torch.hub.list reads GitHub only; its rule (public callables of hubconf) applied locally
    spec = importlib.util.spec_from_file_location("hubconf", ROOT / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    names = [n for n in dir(hubconf) if callable(getattr(hubconf, n)) and not n.startswith("_")]
    assert set(AUTHORS_HUBCONF) | {"fit3d"} <= set(names)
    # every hubconf-style registry alias is an entry, so the two lists cannot drift apart
    aliases = {a for spec in REGISTRY.values() for a in spec.aliases if a.endswith("_fine")}
    assert aliases == set(AUTHORS_HUBCONF)


def test_hubconf_entry_returns_what_the_authors_entry_returns(tiny_spec, hub_cache, monkeypatch,
                                                             tiny_pair, tmp_path):
    """``dinov2_small_fine`` (pointed at the tiny cached release) equals the authors' recipe:
    timm.create_model(num_classes=0, dynamic_img_size=True) + their state dict."""
    monkeypatch.setitem(REGISTRY, "dinov2_small.fit3d",
                        replace(tiny_spec, name="dinov2_small.fit3d"))
    vit = torch.hub.load(str(ROOT), "dinov2_small_fine", source="local", trust_repo=True,
                         cache_dir=hub_cache)
    authors = timm.create_model(TINY_ARCH, pretrained=False, num_classes=0,
                                dynamic_img_size=True, dynamic_img_pad=False, **TINY_ARGS)
    authors.load_state_dict(tiny_pair[1].state_dict())
    authors.eval()
    assert isinstance(vit, timm.models.VisionTransformer)
    with torch.no_grad():
        torch.testing.assert_close(vit.forward_features(X), authors.forward_features(X),
                                   rtol=0, atol=0)
    pair = torch.hub.load(str(ROOT), "fit3d", name="tiny_dinov2", source="local",
                          trust_repo=True, cache_dir=hub_cache)
    assert isinstance(pair, FiT3D)
    with torch.no_grad():
        torch.testing.assert_close(pair(X), load_fit3d("tiny_dinov2", cache_dir=hub_cache)(X))
