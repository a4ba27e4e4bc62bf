"""DINOv3 (timm's Eva blocks, RoPE, 4 registers) as a FiT3D base, and timm's feature contract
for every kind of base: tiny random configs, offline."""

from __future__ import annotations

import copy

import pytest
import torch
from timm.models._features import FeatureGetterNet

from fit3d_hub import FiT3D, get_transform, load_fit3d
from fit3d_hub.backbone import create_vit
from fit3d_hub.lora import add_lora, merge_lora
from fit3d_hub.registry import REGISTRY
from training.equivariance.config import EquivarianceConfig
from training.equivariance.run import check_backbone

TINY = {"embed_dim": 32, "depth": 2, "num_heads": 2}
BASES = sorted({spec.base_model for spec in REGISTRY.values()})


def _tiny(base_model: str, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    args = dict(TINY)
    if "giant" in base_model:  # SwiGLU's packed hidden width must be even
        args["embed_dim"] = 48
    vit = create_vit(base_model, args)
    with torch.no_grad():
        for p in vit.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return vit.eval()


@pytest.fixture(scope="module")
def dinov3() -> FiT3D:
    return FiT3D(_tiny("vit_small_patch16_dinov3.lvd1689m", 0),
                 _tiny("vit_small_patch16_dinov3.lvd1689m", 1))


def test_dinov3_features_at_any_patch_multiple(dinov3):
    for h, w in ((32, 48), (64, 80), (16, 16)):
        x = torch.randn(2, 3, h, w)
        with torch.no_grad():
            feats = dinov3.forward_features(x)
            own = [v.forward_features(x)[:, v.num_prefix_tokens:] for v in
                   (dinov3.original, dinov3.finetuned)]
        assert feats.features.shape == (2, 64, h // 16, w // 16)
        expected = torch.cat([t.transpose(1, 2).reshape(2, 32, h // 16, w // 16) for t in own],
                             dim=1)
        torch.testing.assert_close(feats.features, expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(feats.cls_token, dinov3.original.forward_features(x)[:, 0])


def test_dinov3_intermediates_equal_each_branchs_own(dinov3):
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        final, layers = dinov3.forward_intermediates(x, indices=[0, 1], norm=True,
                                                     return_prefix_tokens=True)
        for k, vit in enumerate((dinov3.original, dinov3.finetuned)):
            own_final, own = vit.forward_intermediates(x, indices=[0, 1], norm=True,
                                                       return_prefix_tokens=True)
            sl = slice(32 * k, 32 * (k + 1))
            torch.testing.assert_close(final[..., sl], own_final)
            for (maps, prefix), (own_maps, own_prefix) in zip(layers, own, strict=True):
                torch.testing.assert_close(maps[:, sl], own_maps)
                torch.testing.assert_close(prefix[..., sl], own_prefix)
    assert prefix.shape[1] == 5  # CLS and 4 registers


def test_equivariance_lora_on_dinov3_merges_to_the_adapted_model():
    vit = _tiny("vit_small_patch16_dinov3.lvd1689m", 2)
    check_backbone(vit, "dinov3_small", EquivarianceConfig(lora_blocks=2))
    adapted = copy.deepcopy(vit)
    for adapter in add_lora(adapted, blocks=2):
        with torch.no_grad():
            for p in adapter.parameters():
                if p.requires_grad:
                    p.copy_(torch.randn_like(p) * 0.1)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        before = adapted.forward_features(x)
        merged = merge_lora(adapted).forward_features(x)
        untouched = vit.forward_features(x)
    torch.testing.assert_close(merged, before, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(merged, untouched, atol=1e-3)  # the adapters did something


def test_dinov3_repo_round_trip_and_transformers(dinov3, tmp_path):
    dinov3.save_pretrained(tmp_path / "repo", include_base=True)
    loaded = load_fit3d(tmp_path / "repo")
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), dinov3(x), rtol=0, atol=0)
    assert get_transform(tmp_path / "repo").patch_size == 16
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModel.from_pretrained(tmp_path / "repo")
    with torch.no_grad():
        out = model(pixel_values=x, output_hidden_states=True)
    assert out.last_hidden_state.shape == (1, 5 + 6, 64)
    assert len(out.hidden_states) == 3 and out.hidden_states[0].shape == (1, 5 + 6, 64)
    backbone = transformers.AutoBackbone.from_pretrained(tmp_path / "repo",
                                                         out_indices=[0, 2])
    with torch.no_grad():
        maps = backbone(pixel_values=x).feature_maps
    assert [m.shape for m in maps] == [(1, 64, 2, 3), (1, 64, 2, 3)]


@pytest.mark.parametrize("base_model", BASES)
def test_timm_feature_contract_for_every_base(base_model):
    """What timm's features_only consumers need, on each registry base (tiny): feature_info,
    FeatureGetterNet, and gradient checkpointing that changes nothing."""
    model = FiT3D(_tiny(base_model, 0), _tiny(base_model, 1))
    p = model.patch_size
    x = torch.randn(1, 3, 2 * p, 3 * p)
    info = model.feature_info
    assert len(info) == 2 and all(i["num_chs"] == model.out_channels and
                                  i["reduction"] == p for i in info)
    getter = FeatureGetterNet(copy.deepcopy(model), out_indices=[0, 1])
    with torch.no_grad():
        maps = getter(x)
        expected = model.forward_intermediates(x, indices=[0, 1], intermediates_only=True)
    assert [m.shape for m in maps] == [(1, model.out_channels, 2, 3)] * 2
    for got, want in zip(maps, expected, strict=True):
        torch.testing.assert_close(got, want)
    assert getter.feature_info.channels() == [model.out_channels] * 2
    x.requires_grad_(True)
    model.train()
    plain = model(x)
    (grad_plain,) = torch.autograd.grad(plain.square().sum(), x)
    model.set_grad_checkpointing(True)
    checkpointed = model(x)
    (grad_ckpt,) = torch.autograd.grad(checkpointed.square().sum(), x)
    torch.testing.assert_close(checkpointed, plain)
    torch.testing.assert_close(grad_ckpt, grad_plain)
    assert all(v.grad_checkpointing for v in (model.original, model.finetuned))


def test_every_method_trains_from_a_dinov3_base(tmp_path):
    """Stage 1, Stage 2 and the equivariance method each run a few steps on a tiny DINOv3
    base and write a repo that loads."""
    from scenes.synthetic import generate
    from training.equivariance.run import run_equivariance
    from training.fit3d.finetune.config import FinetuneConfig
    from training.fit3d.finetune.run import run_finetune
    from training.fit3d.lift.config import SHORT_RUN_RATES, LiftConfig
    from training.fit3d.lift.run import lift_scenes

    vit = _tiny("vit_small_patch16_dinov3.lvd1689m", 0)
    FiT3D(vit, copy.deepcopy(vit)).save_pretrained(tmp_path / "base", include_base=True)
    generate(tmp_path / "scenes", scenes=1, views=4, size=48, seed=0)
    quiet = {"progress": False, "log": lambda _: None}
    summary = lift_scenes(tmp_path / "scenes", str(tmp_path / "base"), tmp_path / "lifted",
                          LiftConfig(iterations=3, max_points=300, lr=SHORT_RUN_RATES),
                          backend="torch", **quiet)
    assert summary["lifted"] == 1 and not summary["failed"]
    run_finetune(tmp_path / "lifted", str(tmp_path / "base"), tmp_path / "fit3d",
                 FinetuneConfig(batch_size=1, save_every=0), backend="torch", **quiet)
    run_equivariance(tmp_path / "scenes", str(tmp_path / "base"), tmp_path / "eq",
                     EquivarianceConfig(steps=2, lora_blocks=2, target_size=48, points=100,
                                        save_every=0), **quiet)
    x = torch.randn(1, 3, 32, 48)
    for repo, method in ((tmp_path / "fit3d", "fit3d"), (tmp_path / "eq", "equivariance")):
        model = load_fit3d(repo)
        assert model.fit3d_block.method == method
        with torch.no_grad():
            assert model(x).shape == (1, 64, 2, 3)
