"""Shared fixtures. Nothing here touches the network: HF_HUB_OFFLINE is set for the whole
session, so an unexpected download fails fast instead of hanging."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from helpers import TINY_ARCH, TINY_ARGS, pth_bytes, put_in_cache, tiny_vit

from fit3d_hub.registry import REGISTRY, BackboneSpec
from fit3d_hub.weights import save_state_dict


@pytest.fixture
def tiny_spec(monkeypatch) -> BackboneSpec:
    """A registry entry for a tiny DINOv2-style backbone, in a temporary author repo."""
    spec = BackboneSpec(
        name="tiny_dinov2", base_model=TINY_ARCH, patch_size=14, embed_dim=32,
        license="apache-2.0", finetuned_repo="test-authors/FiT3D",
        finetuned_file="tiny_dinov2_finetuned.pth", display_name="tiny DINOv2",
        aliases=("tiny_dinov2_fine",), model_args=dict(TINY_ARGS),
    )
    monkeypatch.setitem(REGISTRY, spec.name, spec)
    return spec


@pytest.fixture
def tiny_pair() -> tuple[torch.nn.Module, torch.nn.Module]:
    """(original, finetuned): two tiny ViTs of one architecture with different weights."""
    return tiny_vit(0), tiny_vit(1)


@pytest.fixture
def hub_cache(tmp_path, tiny_spec, tiny_pair) -> Path:
    """A cache holding the tiny spec's base (timm repo, with a classifier head) and weights."""
    original, finetuned = tiny_pair
    cache = tmp_path / "hf-cache"
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    # timm hub checkpoints carry the classifier; loading must drop it for num_classes=0.
    state = dict(original.state_dict())
    state["head.weight"] = torch.randn(10, 32)
    state["head.bias"] = torch.zeros(10)
    save_state_dict(state, scratch / "base.safetensors")
    put_in_cache(cache, tiny_spec.base_repo,
                 {"model.safetensors": scratch / "base.safetensors"})
    put_in_cache(cache, tiny_spec.finetuned_repo,
                 {tiny_spec.finetuned_file: pth_bytes(finetuned, scratch, "ft.pth")})
    return cache


def pytest_addoption(parser):
    parser.addoption("--fuzz", type=int, default=0, metavar="N",
                     help="cases per target in tests/test_fuzz.py (default: its short run; "
                          "nightly: --fuzz 2000)")
