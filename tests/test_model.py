"""The FiT3D module: numerics, modes, sizes, dtypes, devices, compile, batch invariance."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import TINY_REG_ARCH, by_hand, tiny_vit

from fit3d_hub import FiT3D, InputShapeError


@pytest.fixture
def model(tiny_pair) -> FiT3D:
    return FiT3D(*tiny_pair)


def test_concat_equals_two_timm_models_by_hand(model, tiny_pair):
    x = torch.randn(2, 3, 42, 56)
    with torch.no_grad():
        out = model(x)
        expected = by_hand(*tiny_pair, x)
    assert out.shape == (2, 64, 3, 4)
    assert model.out_channels == 64
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    # [original | finetuned], not the other way round
    assert not torch.allclose(out[:, :32], out[:, 32:])


def test_register_tokens_are_dropped():
    original, finetuned = tiny_vit(0, TINY_REG_ARCH), tiny_vit(1, TINY_REG_ARCH)
    assert original.num_prefix_tokens == 5
    m = FiT3D(original, finetuned)
    x = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(m(x), by_hand(original, finetuned, x), rtol=0, atol=0)


def test_forward_features_fields(model, tiny_pair):
    original, _ = tiny_pair
    x = torch.randn(2, 3, 28, 42)
    with torch.no_grad():
        f = model.forward_features(x)
        cls = original.forward_features(x)[:, 0]
    assert f.features.shape == (2, 64, 2, 3)
    torch.testing.assert_close(f.features, torch.cat([f.original, f.finetuned], 1))
    torch.testing.assert_close(f.cls_token, cls)


class _Counter:
    def __init__(self, module):
        self.calls = 0
        module.register_forward_hook(self)

    def __call__(self, *_):
        self.calls += 1


@pytest.mark.parametrize("mode, runs_original, runs_finetuned, channels",
                         [("concat", 1, 1, 64), ("finetuned", 0, 1, 32), ("original", 1, 0, 32)])
def test_modes_run_only_their_backbones(tiny_pair, mode, runs_original, runs_finetuned, channels):
    original, finetuned = tiny_pair
    m = FiT3D(original, finetuned, mode=mode)
    # each backbone embeds its patches once per run, whichever timm path reads its blocks
    count_o, count_f = _Counter(original.patch_embed), _Counter(finetuned.patch_embed)
    x = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        out = m(x)
        calls = (count_o.calls, count_f.calls)
        full = by_hand(original, finetuned, x)
    assert calls == (runs_original, runs_finetuned)
    assert out.shape[1] == channels == m.out_channels
    part = {"concat": full, "original": full[:, :32], "finetuned": full[:, 32:]}[mode]
    torch.testing.assert_close(out, part, rtol=0, atol=0)


def test_mode_without_its_backbone_is_refused(tiny_pair):
    original, _ = tiny_pair
    with pytest.raises(ValueError, match="needs the finetuned backbone"):
        FiT3D(original, None, mode="concat")
    m = FiT3D(original, None, mode="original")
    with pytest.raises(ValueError, match="mode must be one of"):
        m.mode = "sum"


def test_mismatched_twins_are_refused():
    with pytest.raises(ValueError, match="embed_dim"):
        FiT3D(tiny_vit(0), tiny_vit(1, embed_dim=48, num_heads=2))


def test_bad_size_names_nearest_valid_sizes(model):
    with pytest.raises(InputShapeError) as err:
        model(torch.randn(1, 3, 30, 50))
    msg = str(err.value)
    assert "30x50" in msg and "28x42" in msg and "42x56" in msg and "pad='center'" in msg
    assert "\n" not in msg


@pytest.mark.parametrize("bad", [torch.randn(3, 28, 28), torch.randn(1, 1, 28, 28), "img"])
def test_bad_rank_or_channels(model, bad):
    with pytest.raises(InputShapeError, match=r"\(B, 3, H, W\)"):
        model(bad)


def test_center_padding_matches_padding_by_hand(tiny_pair):
    original, finetuned = tiny_pair
    m = FiT3D(original, finetuned, pad="center")
    x = torch.randn(1, 3, 30, 39)  # pads 12 rows (6/6) and 3 columns (1/2) -> 42x42
    with torch.no_grad():
        out = m(x)
        expected = by_hand(original, finetuned, F.pad(x, (1, 2, 6, 6)))
    assert out.shape == (1, 64, 3, 3)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    with pytest.raises(ValueError, match="pad must be"):
        m.pad = "reflect"


def test_batch_invariance(model):
    x = torch.randn(4, 3, 28, 42)
    with torch.no_grad():
        together = model(x)
        alone = torch.cat([model(x[i:i + 1]) for i in range(4)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_weights(tiny_pair, dtype):
    m32 = FiT3D(*tiny_pair)
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        ref = m32(x)
        low = FiT3D(tiny_vit(0), tiny_vit(1)).to(dtype)
        out = low(x.to(dtype))
    assert out.dtype == dtype
    assert low.original.patch_embed.proj.weight.dtype == dtype
    err = (out.float() - ref).abs().mean() / ref.abs().mean()
    assert err < 0.05


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast(model, dtype):
    x = torch.randn(2, 3, 28, 28)
    seen = []
    for vit in (model.original, model.finetuned):
        vit.blocks[0].attn.qkv.register_forward_hook(lambda _m, _i, o: seen.append(o.dtype))
    with torch.no_grad():
        ref = model(x)
        seen.clear()
        with torch.autocast("cpu", dtype=dtype):
            out = model(x)
    assert seen == [dtype, dtype]  # the matmuls of both backbones ran in low precision
    assert out.dtype == torch.float32  # autocast runs the final LayerNorm in fp32
    err = (out.float() - ref).abs().mean() / ref.abs().mean()
    assert err < 0.05


def test_to_device_moves_both_backbones(model):
    moved = model.to("meta")
    assert moved.original.cls_token.device.type == "meta"
    assert moved.finetuned.cls_token.device.type == "meta"
    out = moved(torch.randn(1, 3, 28, 28, device="meta"))
    assert out.shape == (1, 64, 2, 2) and out.device.type == "meta"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.gpu
def test_cuda_matches_cpu(model):
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        ref = model(x)
        out = model.to("cuda")(x.cuda()).cpu()
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-3)


def test_torch_compile(model):
    x = torch.randn(2, 3, 28, 42)
    compiled = torch.compile(model)
    with torch.no_grad():
        ref = model(x)
        out = compiled(x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_gradients_reach_both_backbones(model):
    model.train()
    out = model(torch.randn(1, 3, 28, 28))
    out.square().mean().backward()
    assert model.original.patch_embed.proj.weight.grad is not None
    assert model.finetuned.patch_embed.proj.weight.grad is not None
