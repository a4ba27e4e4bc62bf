"""The fit3d-hub command line: each subcommand, exit codes, one-line errors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import by_hand, tiny_vit
from PIL import Image

from fit3d_hub import FiT3D, load_fit3d
from fit3d_hub.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_console_script_is_installed():
    proc = subprocess.run([sys.executable, "-m", "fit3d_hub.cli", "--help"], capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0
    for command in ("list", "download", "convert", "push", "card", "features"):
        assert command in proc.stdout


def test_list(capsys):
    code, out, _ = run(capsys, "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["name", "method", "base", "model", "(timm)", "released",
                                "weights", "license", "paper"]
    assert any(line.startswith("mae_base.fit3d ") and "cc-by-nc-4.0" in line for line in lines)
    assert any(line.startswith("dinov3_large ") and "dinov3-license" in line for line in lines)
    code, out, _ = run(capsys, "list", "--pretrained", "--method", "fit3d")
    listed = {line.split()[0] for line in out.splitlines()[1:]}
    assert listed == {"dinov2_small.fit3d", "dinov2_base.fit3d", "dinov2_reg_small.fit3d",
                      "clip_base.fit3d", "mae_base.fit3d", "deit3_base.fit3d"}
    assert any(line.startswith("dinov2_base.fit3d ") and
               "yuanwenyue/FiT3D:dinov2_base_finetuned.pth" in line
               for line in out.splitlines())
    code, out, _ = run(capsys, "list", "--method", "equivariance")
    rows = out.splitlines()[1:]
    assert len(rows) == 11 and all("qq456cvb/3DCorrEnhance:" in r for r in rows)


def test_download_dinov2_base_names_the_authors_file(capsys, tmp_path):
    code, _, err = run(capsys, "download", "dinov2_base", "--cache-dir", str(tmp_path))
    assert code == 1 and err.count("\n") == 1
    assert "timm/vit_base_patch14_dinov2.lvd142m:model.safetensors" in err
    assert "yuanwenyue/FiT3D:dinov2_base_finetuned.pth" in err
    assert "fit3d-hub download dinov2_base" in err


def test_download_offline_is_one_line_listing_files(capsys, tmp_path):
    code, _, err = run(capsys, "download", "dinov2_small", "--cache-dir", str(tmp_path))
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("fit3d-hub download: error:")
    assert "yuanwenyue/FiT3D:dinov2_small_finetuned.pth" in err
    assert "timm/vit_small_patch14_dinov2.lvd142m:model.safetensors" in err


def test_download_reports_cached_paths(capsys, hub_cache):
    # With everything cached the download is a no-op that prints where the files are.
    code, out, _ = run(capsys, "download", "tiny_dinov2", "--cache-dir", str(hub_cache))
    assert code == 0
    assert "original:" in out and "tiny_dinov2_finetuned.pth" in out


def test_convert_authors_checkpoint(capsys, tiny_spec, tiny_pair, tmp_path):
    original, finetuned = tiny_pair
    pth = tmp_path / "tiny_dinov2_finetuned.pth"
    torch.save(finetuned.state_dict(), pth)
    base = tmp_path / "base.pth"
    torch.save(original.state_dict(), base)
    out = tmp_path / "repo"
    code, stdout, _ = run(capsys, "convert", str(pth), "--backbone", "tiny_dinov2", "--output",
                          str(out), "--base", str(base))
    assert code == 0 and "wrote" in stdout
    model = load_fit3d(out)
    x = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(model(x), by_hand(original, finetuned, x), rtol=0, atol=0)
    assert model.fit3d_block.training["release"] == "authors"
    # A second convert into the same directory must not silently replace the repo.
    code, _, err = run(capsys, "convert", str(pth), "--backbone", "tiny_dinov2", "--output",
                       str(out))
    assert code == 1 and "already holds a repo" in err


def test_convert_without_base_points_at_the_hub(capsys, tiny_spec, tiny_pair, hub_cache, tmp_path):
    pth = tmp_path / "ft.pth"
    torch.save(tiny_pair[1].state_dict(), pth)
    code, _, _ = run(capsys, "convert", str(pth), "--backbone", "tiny_dinov2", "--output",
                     str(tmp_path / "repo"))
    assert code == 0
    assert not (tmp_path / "repo" / "base.safetensors").exists()
    model = load_fit3d(tmp_path / "repo", cache_dir=hub_cache)
    x = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(model(x), by_hand(*tiny_pair, x), rtol=0, atol=0)


def test_convert_rejects_wrong_architecture(capsys, tiny_spec, tmp_path):
    pth = tmp_path / "ft.pth"
    torch.save(tiny_vit(0, "vit_small_patch14_reg4_dinov2.lvd142m").state_dict(), pth)
    code, _, err = run(capsys, "convert", str(pth), "--backbone", "tiny_dinov2", "--output",
                       str(tmp_path / "repo"))
    assert code == 1 and "unexpected keys: reg_token" in err and err.count("\n") == 1
    assert not (tmp_path / "repo" / "config.json").exists()


def test_push_validates_then_uploads(capsys, tiny_pair, tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    class RecordingApi:
        def __init__(self, **kwargs):
            calls.append(("init", kwargs))

        def create_repo(self, repo_id, **kwargs):
            calls.append(("create_repo", repo_id, kwargs))

        def upload_folder(self, **kwargs):
            calls.append(("upload_folder", kwargs))
            return huggingface_hub.CommitInfo(
                commit_url=f"https://huggingface.co/{kwargs['repo_id']}/commit/abc",
                commit_message="m", commit_description="", oid="abc")

    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    code, _, err = run(capsys, "push", str(tmp_path / "nothing"), "me/repo")
    assert code == 1 and "no such directory" in err and calls == []

    FiT3D(*tiny_pair).save_pretrained(tmp_path / "repo")
    code, out, _ = run(capsys, "push", str(tmp_path / "repo"), "me/repo", "--private")
    assert code == 0 and out.strip() == "https://huggingface.co/me/repo/commit/abc"
    assert calls[1] == ("create_repo", "me/repo",
                        {"private": True, "exist_ok": True, "repo_type": "model"})
    upload = calls[2][1]
    assert upload["repo_id"] == "me/repo" and upload["folder_path"] == str(tmp_path / "repo")
    assert "checkpoints/**" in upload["ignore_patterns"]  # training checkpoints stay local


def test_card_command_adds_measured_results(capsys, tiny_pair, tmp_path):
    FiT3D(*tiny_pair).save_pretrained(tmp_path)
    results = tmp_path / "results.json"
    results.write_text('{"results": [{"task": "depth-estimation", "dataset": "synthetic", '
                       '"metric": "RMSE", "value": 0.25}]}')
    code, _, _ = run(capsys, "card", str(tmp_path), "--results", str(results))
    assert code == 0
    text = (tmp_path / "README.md").read_text()
    assert "| depth-estimation | synthetic | RMSE | concat | unspecified | 0.25 |" in text
    code, _, err = run(capsys, "card", str(tmp_path / "nope"))
    assert code == 1 and "config.json: missing" in err


def test_features_writes_side_by_side_pca(capsys, tiny_pair, tmp_path):
    FiT3D(*tiny_pair).save_pretrained(tmp_path / "repo")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (60, 90, 3), dtype=np.uint8)).save(tmp_path / "in.png")
    out = tmp_path / "pca" / "out.png"
    code, stdout, _ = run(capsys, "features", str(tmp_path / "in.png"), "--model",
                          str(tmp_path / "repo"), "--output", str(out))
    assert code == 0 and "token grid 4x6" in stdout
    picture = Image.open(out)
    # three panels of the 56x84 processed size, 4 px gaps, an 18 px title strip
    assert picture.size == (3 * 84 + 2 * 4, 56 + 18)
    pixels = np.asarray(picture)
    assert pixels[18:, 88:172].std() > 10 and pixels[18:, 176:].std() > 10  # not blank


def test_features_bad_image_is_one_line(capsys, tiny_pair, tmp_path):
    FiT3D(*tiny_pair).save_pretrained(tmp_path / "repo")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    code, _, err = run(capsys, "features", str(tmp_path / "bad.png"), "--model",
                       str(tmp_path / "repo"), "--output", str(tmp_path / "o.png"))
    assert code == 1 and "bad.png: not a readable image" in err and err.count("\n") == 1
    assert not (tmp_path / "o.png").exists()


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["convert", "x.pth"])
    assert exc.value.code == 2
    assert "--backbone" in capsys.readouterr().err
