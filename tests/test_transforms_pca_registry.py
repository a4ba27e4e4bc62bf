"""Preprocessing, PCA pictures and the registry's data checked against timm."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from fit3d_hub import FiT3D, InputShapeError, get_transform
from fit3d_hub.pca import pca_rgb
from fit3d_hub.registry import REGISTRY, get_spec, list_models
from fit3d_hub.transforms import FiT3DTransform


def test_transform_rounds_down_to_patch_multiples_and_normalises():
    t = FiT3DTransform((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), patch_size=14)
    image = Image.new("RGB", (100, 45), (255, 128, 0))  # width 100, height 45
    x = t(image)
    assert x.shape == (3, 42, 98)
    torch.testing.assert_close(x[:, 5, 5], torch.tensor([2.0, (128 / 255 - 0.5) / 0.25, -2.0]))


def test_transform_sizes():
    t = FiT3DTransform((0, 0, 0), (1, 1, 1), patch_size=16, size=224)
    assert t.output_size(480, 640) == (224, 288)  # shorter side 224, longer 298.7 -> 288
    assert FiT3DTransform((0, 0, 0), (1, 1, 1), 16, (32, 64)).output_size(5, 5) == (32, 64)
    with pytest.raises(InputShapeError, match="multiples of the patch size 16"):
        FiT3DTransform((0, 0, 0), (1, 1, 1), 16, (30, 64)).output_size(5, 5)


def test_transform_accepts_arrays_and_tensors():
    t = FiT3DTransform((0, 0, 0), (1, 1, 1), patch_size=14)
    arr = np.full((28, 28, 3), 255, dtype=np.uint8)
    assert torch.equal(t(arr), torch.ones(3, 28, 28))
    assert torch.equal(t(torch.from_numpy(arr).permute(2, 0, 1)), torch.ones(3, 28, 28))
    with pytest.raises(InputShapeError, match="HxWx3"):
        t(np.zeros((28, 28)))


def test_get_transform_for_names_and_models(tiny_pair):
    clip = get_transform("clip_base")
    # The authors normalise CLIP with ImageNet statistics, unlike timm's CLIP config.
    assert clip.mean == (0.485, 0.456, 0.406) and clip.patch_size == 16
    assert get_transform("dinov2_small_fine").patch_size == 14
    assert get_transform(FiT3D(*tiny_pair)).std == (0.229, 0.224, 0.225)


def test_pca_rgb_separates_two_groups_deterministically():
    torch.manual_seed(0)
    feats = torch.randn(16, 6, 8) * 0.05
    feats[:, :, :4] += torch.randn(16, 1, 1)  # left half and right half differ
    rgb = pca_rgb(feats)
    assert rgb.shape == (6, 8, 3) and rgb.dtype == np.uint8
    left, right = rgb[:, :4].reshape(-1, 3).astype(float), rgb[:, 4:].reshape(-1, 3).astype(float)
    assert np.abs(left.mean(0) - right.mean(0)).max() > 100
    assert np.array_equal(rgb, pca_rgb(feats.clone()))
    # Components are sign-fixed by their loadings, so negated features give the negative picture.
    assert np.abs(pca_rgb(-feats).astype(int) - (255 - rgb.astype(int))).max() <= 1


def test_registry_matches_timm():
    assert list_models() == sorted(REGISTRY)
    for spec in REGISTRY.values():
        cfg = timm.models.get_pretrained_cfg(spec.base_model)
        assert cfg.hf_hub_id == spec.base_repo, spec.name
        assert cfg.license == spec.license, spec.name
        with torch.device("meta"):  # shapes only: the giants build in no time
            vit = timm.create_model(spec.base_model, pretrained=False, num_classes=0)
        assert vit.patch_embed.patch_size[0] == spec.patch_size, spec.name
        assert vit.embed_dim == spec.embed_dim, spec.name
        assert len(vit.blocks) == spec.depth, spec.name
        if spec.method == "fit3d":
            assert get_spec(f"{spec.base_name}_fine") is spec
            assert get_spec(spec.base_name) is spec
