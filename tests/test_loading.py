"""load_fit3d through the real huggingface_hub cache code: names, repos, revisions, offline."""

from __future__ import annotations

import dataclasses
import re
import time

import pytest
import torch
from helpers import by_hand, pth_bytes, put_in_cache, tiny_vit

import fit3d_hub
from fit3d_hub import (
    CheckpointError,
    HubFileNotFoundError,
    NotCachedError,
    UnknownModelError,
    UnsafeCheckpointError,
    load_fit3d,
)
from fit3d_hub.registry import REGISTRY, get_spec
from fit3d_hub.weights import save_state_dict

X = torch.randn(2, 3, 28, 42)


def _same(model, original, finetuned):
    with torch.no_grad():
        torch.testing.assert_close(model(X), by_hand(original, finetuned, X), rtol=0, atol=0)


def test_registry_name_from_cache(hub_cache, tiny_pair):
    model = load_fit3d("tiny_dinov2", cache_dir=hub_cache)
    assert not model.training
    _same(model, *tiny_pair)
    assert model.fit3d_block.base.repo_id == "timm/vit_small_patch14_dinov2.lvd142m"


def test_authors_hubconf_alias(hub_cache, tiny_pair):
    _same(load_fit3d("tiny_dinov2_fine", cache_dir=hub_cache), *tiny_pair)


def test_revision_selects_weights(hub_cache, tiny_spec, tiny_pair, tmp_path):
    newer = tiny_vit(7)
    put_in_cache(hub_cache, tiny_spec.finetuned_repo,
                 {tiny_spec.finetuned_file: pth_bytes(newer, tmp_path, "v2.pth")}, revision="v2")
    _same(load_fit3d("tiny_dinov2", cache_dir=hub_cache, revision="v2"), tiny_pair[0], newer)
    _same(load_fit3d("tiny_dinov2", cache_dir=hub_cache), *tiny_pair)
    with pytest.raises(NotCachedError, match=re.escape("@v3:tiny_dinov2_finetuned.pth")):
        load_fit3d("tiny_dinov2", cache_dir=hub_cache, revision="v3")


def test_offline_with_empty_cache_lists_everything_at_once(tiny_spec, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(NotCachedError) as err:
        load_fit3d("tiny_dinov2", cache_dir=tmp_path / "empty")
    assert time.perf_counter() - start < 5  # no retries, no network wait
    msg = str(err.value)
    assert "timm/vit_small_patch14_dinov2.lvd142m:model.safetensors" in msg
    assert "test-authors/FiT3D:tiny_dinov2_finetuned.pth" in msg
    assert "fit3d-hub download tiny_dinov2" in msg and "offline" in msg
    assert err.value.missing == ["timm/vit_small_patch14_dinov2.lvd142m:model.safetensors",
                                 "test-authors/FiT3D:tiny_dinov2_finetuned.pth"]


def test_local_files_only_overrides_environment(hub_cache, tiny_pair, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    # Everything is cached, so local_files_only=True must load without any network access.
    _same(load_fit3d("tiny_dinov2", cache_dir=hub_cache, local_files_only=True), *tiny_pair)


def test_single_branch_modes_fetch_only_their_file(tiny_spec, tiny_pair, tmp_path):
    original, finetuned = tiny_pair
    cache = tmp_path / "c"
    put_in_cache(cache, tiny_spec.base_repo,
                 {"model.safetensors": save_state_dict(original.state_dict(), tmp_path / "b.st")})
    model = load_fit3d("tiny_dinov2", mode="original", cache_dir=cache)
    assert model.finetuned is None and model.out_channels == 32
    with torch.no_grad():
        torch.testing.assert_close(model(X), by_hand(original, finetuned, X)[:, :32])
    with pytest.raises(NotCachedError) as err:
        load_fit3d("tiny_dinov2", mode="finetuned", cache_dir=cache)
    assert err.value.missing == ["test-authors/FiT3D:tiny_dinov2_finetuned.pth"]


def test_no_released_weights_is_a_clear_error(tiny_spec, monkeypatch):
    unreleased = dataclasses.replace(tiny_spec, name="tiny_unreleased", finetuned_file=None)
    monkeypatch.setitem(REGISTRY, unreleased.name, unreleased)
    assert "tiny_unreleased" not in fit3d_hub.list_models(pretrained=True)
    with pytest.raises(HubFileNotFoundError,
                       match="tiny_unreleased: no 3D-aware weights were released"):
        load_fit3d("tiny_unreleased")


def test_pretrained_false_builds_without_files(tiny_spec):
    model = load_fit3d("tiny_dinov2", pretrained=False)
    assert model.embed_dim == 32 and model.fit3d_block.base is None


def test_mismatched_checkpoint_names_keys(tiny_spec, hub_cache, tmp_path):
    state = tiny_vit(3).state_dict()
    state.pop("blocks.1.mlp.fc2.weight")
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    put_in_cache(hub_cache, tiny_spec.finetuned_repo, {tiny_spec.finetuned_file: path},
                 revision="bad")
    with pytest.raises(CheckpointError) as err:
        load_fit3d("tiny_dinov2", cache_dir=hub_cache, revision="bad")
    msg = str(err.value)
    assert "missing keys: blocks.1.mlp.fc2.weight" in msg and "unexpected keys: extra.weight" in msg


def test_wrong_width_checkpoint_names_shapes(tiny_spec, hub_cache, tmp_path):
    wide = tiny_vit(3, embed_dim=48, num_heads=2)
    put_in_cache(hub_cache, tiny_spec.finetuned_repo,
                 {tiny_spec.finetuned_file: pth_bytes(wide, tmp_path, "w.pth")}, revision="wide")
    with pytest.raises(CheckpointError, match=r"cls_token \(1, 1, 48\) vs \(1, 1, 32\)"):
        load_fit3d("tiny_dinov2", cache_dir=hub_cache, revision="wide")


class _RunsCode:
    """Unpickling this calls a function: exactly what weights_only=True must refuse."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_malicious_pickle_is_refused_and_runs_nothing(tiny_spec, hub_cache, tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"cls_token": torch.zeros(1), "payload": _RunsCode(marker)}, path)
    put_in_cache(hub_cache, tiny_spec.finetuned_repo, {tiny_spec.finetuned_file: path},
                 revision="evil")
    with pytest.raises(UnsafeCheckpointError) as err:
        load_fit3d("tiny_dinov2", cache_dir=hub_cache, revision="evil")
    assert not marker.exists()
    assert "refused to unpickle" in str(err.value) and "tiny_dinov2_finetuned.pth" in str(err.value)
    assert "\n" not in str(err.value)


def test_truncated_pickle_is_a_clear_error(tiny_spec, hub_cache, tmp_path):
    data = pth_bytes(tiny_vit(3), tmp_path, "t.pth")
    put_in_cache(hub_cache, tiny_spec.finetuned_repo,
                 {tiny_spec.finetuned_file: data[: len(data) // 2]}, revision="cut")
    expected = re.escape("tiny_dinov2_finetuned.pth: not a readable PyTorch")
    with pytest.raises(CheckpointError, match=expected):
        load_fit3d("tiny_dinov2", cache_dir=hub_cache, revision="cut")


def test_truncated_safetensors_names_the_file(tiny_spec, hub_cache, tmp_path):
    full = save_state_dict(tiny_vit(0).state_dict(), tmp_path / "m.safetensors").read_bytes()
    put_in_cache(hub_cache, tiny_spec.base_repo, {"model.safetensors": full[:-100]})
    with pytest.raises(CheckpointError, match=r"model.safetensors: not a readable safetensors"):
        load_fit3d("tiny_dinov2", cache_dir=hub_cache)


@pytest.mark.parametrize("name, error, text", [
    ("no_such_backbone", UnknownModelError, "`fit3d-hub list` shows every name"),
    ("dinov2_smal", UnknownModelError, "did you mean dinov2_small"),
    ("./missing/dir", UnknownModelError, "no such model directory"),
    ("a/b/c", UnknownModelError, "no such model directory"),
])
def test_unknown_names(name, error, text):
    with pytest.raises(error, match=text):
        load_fit3d(name)


def test_hub_repo_id_offline_lists_repo_files(tmp_path):
    with pytest.raises(NotCachedError) as err:
        load_fit3d("someone/fit3d-tiny", cache_dir=tmp_path)
    assert err.value.missing == ["someone/fit3d-tiny:config.json",
                                 "someone/fit3d-tiny:model.safetensors"]
    assert "fit3d-hub download someone/fit3d-tiny" in str(err.value)


def test_device_and_dtype_arguments(hub_cache):
    model = load_fit3d("tiny_dinov2", cache_dir=hub_cache, device="cpu", dtype=torch.bfloat16)
    assert model.finetuned.cls_token.dtype == torch.bfloat16
    assert model(X.bfloat16()).dtype == torch.bfloat16


def test_public_api_surface():
    fit3d = {"dinov2_small", "dinov2_base", "dinov2_reg_small", "clip_base", "mae_base",
             "deit3_base"}
    # every backbone of the authors' hubconf has released weights, DINOv2-B included
    assert set(fit3d_hub.list_models(pretrained=True, method="fit3d")) == \
        {f"{n}.fit3d" for n in fit3d}
    # the bare names (and the hubconf's) stay FiT3D's
    assert {get_spec(n).name for n in fit3d} == {f"{n}.fit3d" for n in fit3d}
    assert get_spec("dinov2_small_fine").name == "dinov2_small.fit3d"
    bases = set(fit3d_hub.list_models()) - set(fit3d_hub.list_models(pretrained=True))
    assert {"dinov2_large", "dinov2_reg_giant", "dinov3_small_plus", "dinov3_large"} <= bases


@pytest.mark.slow
def test_readme_one_liner_with_full_size_dinov2_small_in_default_cache(tmp_path):
    """The README's `load_fit3d('dinov2_small')`, offline, from a cache holding real-size
    (random) weights laid out under the real hub repo names."""
    import os
    import subprocess
    import sys

    from fit3d_hub.backbone import create_vit
    from fit3d_hub.registry import get_spec

    spec = get_spec("dinov2_small")
    cache = tmp_path / "hub"
    torch.manual_seed(0)
    base = create_vit(spec.base_model)
    save_state_dict(base.state_dict(), tmp_path / "base.safetensors")
    put_in_cache(cache, spec.base_repo, {"model.safetensors": tmp_path / "base.safetensors"})
    fine = create_vit(spec.base_model)
    torch.save(fine.state_dict(), tmp_path / "ft.pth")
    put_in_cache(cache, spec.finetuned_repo, {spec.finetuned_file: tmp_path / "ft.pth"})

    code = ("import torch, fit3d_hub; m = fit3d_hub.load_fit3d('dinov2_small'); "
            "f = m(torch.zeros(1, 3, 28, 42)); print(m.out_channels, tuple(f.shape))")
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=False, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[0] == "768 (1, 768, 2, 3)"
