"""GMAE: the Gaussian decoder's gradients and loss, training through the CLI (resume, NaN
stop, bad input), the repo format (timm loads the encoder, load_fit3d the pair of encoder and
decoder) and the zero-shot outputs."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from fit3d_hub import UsageError, load_fit3d
from fit3d_hub.gmae import (
    CHANNELS,
    GaussianDecoder,
    activate,
    depth_layers,
    depth_maps,
    image_gaussians,
    render,
)
from fit3d_hub.repo_format import validate_repo
from training.gmae.cli import main
from training.gmae.config import GmaeConfig
from training.gmae.model import gaussian_loss
from training.gmae.run import build_model

TINY = ["--architecture", "vit_small_patch16_224", "--embed-dim", "32", "--depth", "2",
        "--num-heads", "2", "--patch-size", "8", "--image-size", "16", "--num-gaussians",
        "16", "--decoder-dim", "32", "--decoder-depth", "1", "--decoder-heads", "2",
        "--batch-size", "2", "--base-lr", "0.05", "--workers", "0", "--backend", "torch"]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("gmae") / "images" / "class_a"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (24 + i, 30, 3), np.uint8)).save(
            folder / f"img_{i}.png")
    return folder.parent


def test_gradients_reach_every_gaussian_parameter_and_every_decoder_weight():
    torch.manual_seed(0)
    decoder = GaussianDecoder(encoder_dim=8, grid=2, num_gaussians=6, dim=8, depth=1, heads=2)
    tokens = torch.randn(1, 1 + 2, 8)
    raw = decoder(tokens, torch.tensor([[0, 3]]))
    raw.retain_grad()
    image, _ = render(activate(raw), 16, 16, "torch")
    image.sub(0.3).square().mean().backward()
    used = [c for c in range(CHANNELS) if c != 9]  # channel 9: the rotation the map leaves out
    assert (raw.grad[0, :, used].abs().sum(0) > 0).all()
    assert raw.grad[0, :, 9].abs().sum() == 0
    for name, p in decoder.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_loss_is_the_masked_patch_mse_computed_by_hand():
    g = torch.Generator().manual_seed(1)
    rendered, target = torch.rand(2, 3, 4, 4, generator=g), torch.rand(2, 3, 4, 4, generator=g)
    mask = torch.tensor([[1.0, 0, 0, 1], [0, 1, 0, 0]])  # patches of 2x2, raster order
    total, count = 0.0, 0
    for b in range(2):
        for k in range(4):
            if mask[b, k]:
                r, c = divmod(k, 2)
                block = (rendered[b, :, 2 * r:2 * r + 2, 2 * c:2 * c + 2]
                         - target[b, :, 2 * r:2 * r + 2, 2 * c:2 * c + 2])
                total += float(block.square().mean())
                count += 1
    assert math.isclose(float(gaussian_loss(rendered, target, mask, 2)), total / count,
                        rel_tol=1e-6)


def test_activations_are_the_authors():
    raw = torch.zeros(1, 1, CHANNELS)
    g = activate(raw, scale_factor=2.0)
    assert torch.allclose(g.means, torch.zeros(1, 1, 3))  # 2 (sigmoid(0) - 0.5)
    assert torch.allclose(g.scales, torch.full((1, 1, 3), 2.0 * 0.5 / 8))  # depth 0 + 8
    assert torch.allclose(g.quats.norm(dim=-1), torch.ones(1, 1))  # Shoemake: unit norm
    assert torch.allclose(g.colors, torch.full((1, 1, 3), 0.5))
    assert torch.allclose(g.opacities, torch.full((1, 1), 0.5))


def test_cli_trains_exports_loads_and_resumes_bit_identically(images, tmp_path):
    straight = tmp_path / "straight"
    assert main(["--images", str(images), "--output", str(straight), "--epochs", "2",
                 *TINY]) == 0
    resumed = tmp_path / "resumed"
    assert main(["--images", str(images), "--output", str(resumed), "--epochs", "1",
                 "--save-every", "1", *TINY]) == 0
    assert main(["--images", str(images), "--output", str(resumed), "--epochs", "2",
                 "--save-every", "1", "--resume", *TINY]) == 0
    a = load_fit3d(straight)
    b = load_fit3d(resumed)
    for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y)
    # the encoder is a plain timm ViT; the pair loads as one branch with its decoder
    vit = timm.create_model(f"local-dir:{straight}", pretrained=True)
    x = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(vit.forward_features(x)[:, 1:],
                                   a.finetuned.forward_features(x)[:, 1:])
        assert a(x).shape == (1, 32, 2, 2)
    assert a.fit3d_block.method == "gmae" and isinstance(a.decoder, GaussianDecoder)
    assert validate_repo(straight).fit3d.gmae.num_gaussians == 16
    with pytest.raises(UsageError, match="mode='concat' has no meaning for a gmae repo"):
        load_fit3d(straight, mode="concat")
    # zero-shot outputs
    with torch.no_grad():
        g = image_gaussians(a, torch.randn(2, 3, 16, 16))
        layers = depth_layers(g, 16, 16, layers=3, backend="torch")
        maps = depth_maps(g, 16, 16, backend="torch")
    assert g.means.shape == (2, 16, 3) and len(layers) == 3
    assert maps["edges"].shape == (2, 1, 16, 16) and float(maps["edges"].max()) <= 1.0
    assert set(np.unique(maps["foreground"].numpy())) <= {0.0, 1.0}


def test_pixel_decoder_baseline_trains_the_same_encoder(images, tmp_path):
    assert main(["--images", str(images), "--output", str(tmp_path / "mae"), "--epochs", "1",
                 "--decoder", "pixels", *TINY]) == 0
    model = load_fit3d(tmp_path / "mae")
    assert model.fit3d_block.gmae.decoder == "pixels"
    with pytest.raises(ValueError, match="Gaussian decoder"):
        image_gaussians(model, torch.randn(1, 3, 16, 16))


def test_bf16_with_gradient_accumulation_trains_and_exports_fp32(images, tmp_path):
    assert main(["--images", str(images), "--output", str(tmp_path / "bf16"), "--epochs", "2",
                 "--mixed-precision", "bf16", "--grad-accum", "3", *TINY]) == 0
    summary = json.loads((tmp_path / "bf16" / "training_summary.json").read_text())
    # 6 images, batches of 2: 3 micro-batches per epoch, one optimizer step per 3
    assert (summary["micro_batches"], summary["steps"]) == (6, 2)
    assert math.isfinite(summary["final_loss"])
    model = load_fit3d(tmp_path / "bf16")
    assert all(v.dtype == torch.float32 and bool(v.isfinite().all())
               for v in model.state_dict().values())


@pytest.mark.parametrize("args, message", [
    (["--num-gaussians", "0"], "--num-gaussians must be >= 1"),
    (["--mask-ratio", "1.0"], "--mask-ratio must be in (0, 1)"),
    (["--mask-ratio", "0"], "--mask-ratio must be in (0, 1)"),
])
def test_bad_flags_are_one_line_exit_2(images, tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exc:
        main(["--images", str(images), "--output", str(tmp_path / "o"), *TINY, *args])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and message in err and err.count("\n") == 1


def test_bad_images_name_the_file(images, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    bad = tmp_path / "bad"
    shutil.copytree(images, bad)
    (bad / "class_a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 40)
    small = tmp_path / "small"
    small.mkdir()
    for name in ("thin.png", "thin2.png"):
        Image.fromarray(np.zeros((5, 30, 3), np.uint8)).save(small / name)
    for folder, expected in ((empty, "no images"), (bad, "broken.png: not a readable image"),
                             (small, ".png: 30x5 is smaller than one 8-pixel patch"),
                             (tmp_path / "nowhere", "no such image folder")):
        code = main(["--images", str(folder), "--output", str(tmp_path / "o"), "--epochs", "1",
                     *TINY])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 1 and expected in err[-1], (folder, err)
        assert not (tmp_path / "o" / "config.json").exists()
    # skipped with a count instead, when asked
    assert main(["--images", str(bad), "--output", str(tmp_path / "skip"), "--epochs", "1",
                 "--skip-unreadable", *TINY]) == 0
    assert "unreadable" in capsys.readouterr().out


def test_a_decompression_bomb_is_refused_before_decoding(tmp_path, capsys):
    folder = tmp_path / "bomb"
    folder.mkdir()
    Image.new("RGB", (4000, 4000)).save(folder / "big.png")  # 16 MP of zeros, a few KB
    for i in range(3):
        Image.new("RGB", (20, 20)).save(folder / f"ok_{i}.png")
    code = main(["--images", str(folder), "--output", str(tmp_path / "o"), "--epochs", "1",
                 "--max-pixels", "1000000", *TINY])
    err = capsys.readouterr().err
    assert code == 1 and "big.png: 4000x4000 pixels is over --max-pixels 1000000" in err


def test_a_hugging_face_dataset_trains_like_the_same_folder(images, tmp_path, capsys):
    pytest.importorskip("datasets", reason="the hf: source needs the 'datasets' package")
    flat = tmp_path / "flat"  # an imagefolder dataset: one folder of images
    flat.mkdir()
    for path in sorted(images.rglob("*.png")):
        shutil.copy(path, flat / path.name)
    cache = ["--cache-dir", str(tmp_path / "hf-cache")]
    assert main(["--images", str(flat), "--output", str(tmp_path / "folder"), "--epochs", "1",
                 *TINY]) == 0
    assert main(["--images", f"hf:{flat}:train", "--output", str(tmp_path / "hf"),
                 "--epochs", "1", *cache, *TINY]) == 0
    a, b = load_fit3d(tmp_path / "folder"), load_fit3d(tmp_path / "hf")
    for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y)
    # rows pass the same size check as files, before their pixels are decoded
    Image.new("RGB", (4000, 4000)).save(flat / "big.png")
    code = main(["--images", f"hf:{flat}", "--output", str(tmp_path / "o"), "--epochs", "1",
                 "--max-pixels", "1000000", *cache, *TINY])
    err = capsys.readouterr().err
    assert code == 1 and "big.png): 4000x4000 pixels is over --max-pixels 1000000" in err
    code = main(["--images", f"hf:{tmp_path / 'nowhere'}", "--output", str(tmp_path / "o"),
                 "--epochs", "1", *cache, *TINY])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and f"error: hf:{tmp_path / 'nowhere'}: FileNotFoundError" in err[-1]


def test_nan_loss_stops_with_one_line(images, tmp_path, capsys, monkeypatch):
    import training.gmae.model as model

    monkeypatch.setattr(model, "gaussian_loss", lambda *a, **k: torch.tensor(float("nan"),
                                                                              requires_grad=True))
    code = main(["--images", str(images), "--output", str(tmp_path / "o"), "--epochs", "1",
                 *TINY])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 1 and "loss became nan at step 1" in err
    assert not (tmp_path / "o" / "config.json").exists()


def test_build_model_fixes_the_sincos_position_code():
    model = build_model(GmaeConfig(architecture="vit_small_patch16_224", embed_dim=32,
                                   depth=1, num_heads=2, patch_size=8, image_size=16,
                                   num_gaussians=4, decoder_dim=16, decoder_depth=1,
                                   decoder_heads=2))
    assert not model.encoder.pos_embed.requires_grad
    assert torch.all(model.encoder.pos_embed[0, 0] == 0)  # the CLS slot


def test_layers_command_writes_the_panels(images, tmp_path, capsys):
    from fit3d_hub.cli import main as cli

    assert main(["--images", str(images), "--output", str(tmp_path / "m"), "--epochs", "1",
                 *TINY]) == 0
    capsys.readouterr()
    picture = next(images.rglob("*.png"))
    assert cli(["layers", str(picture), "--model", str(tmp_path / "m"), "--output",
                str(tmp_path / "l.png"), "--layers", "3", "--height", "40"]) == 0
    assert "7 panels, 16 Gaussians" in capsys.readouterr().out
    with Image.open(tmp_path / "l.png") as img:
        assert img.height >= 40 and img.width > 7 * 40
    assert cli(["layers", str(picture), "--model", str(tmp_path / "m"), "--output",
                str(tmp_path / "x.png"), "--layers", "0"]) == 2


def test_a_gmae_repo_gets_its_own_card(images, tmp_path):
    from fit3d_hub.cards import render_card
    from fit3d_hub.schema import CONFIG_NAME, read_config

    assert main(["--images", str(images), "--output", str(tmp_path / "m"), "--epochs", "1",
                 *TINY]) == 0
    card = render_card(read_config(tmp_path / "m" / CONFIG_NAME))
    assert "Gaussian Masked Autoencoder" in card and "arXiv 2501.03229" in card
    assert "gmae_decoder.safetensors" in card and "[original | fine-tuned]" not in card
    assert "base_model:" not in card.split("---")[1]  # trained from scratch
