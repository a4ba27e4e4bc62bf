"""`fit3d-hub demo`, the README's main job, as a user runs it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image


def test_demo_runs_offline_and_reports_improved_consistency(tmp_path):
    # the console script pip installed beside this interpreter (or on PATH)
    beside = Path(sys.executable).with_name("fit3d-hub")
    exe = str(beside) if beside.exists() else shutil.which("fit3d-hub")
    assert exe, "the fit3d-hub console script is not installed"
    proc = subprocess.run([exe, "demo", "--quick", "--output", str(tmp_path / "demo")],
                          capture_output=True, text=True, timeout=600, check=False,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    original = float(re.search(r"original backbone\s+: ([0-9.]+)", out).group(1))
    finetuned = float(re.search(r"fine-tuned \(FiT3D\)\s+: ([0-9.]+)", out).group(1))
    assert finetuned < original
    assert re.search(r"time per stage: data [0-9.]+ s, lift [0-9.]+ s, finetune [0-9.]+ s", out)
    for name in ("views.png", "pca.png", "rendered_features.png"):
        with Image.open(tmp_path / "demo" / name) as img:
            assert img.width > 100 and img.height > 50
    assert (tmp_path / "demo" / "model" / "model.safetensors").exists()


def test_demo_outside_a_source_checkout_says_so(monkeypatch, capsys):
    import fit3d_hub.checkout as checkout
    from fit3d_hub.cli import main

    monkeypatch.setattr(checkout, "__file__", "/nowhere/fit3d_hub/checkout.py")
    assert main(["demo", "--output", "x"]) == 1
    assert "needs fit3d-hub's source checkout" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--help"])
def test_demo_help(flag, capsys):
    from fit3d_hub.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["demo", flag])
    assert exc.value.code == 0 and "--quick" in capsys.readouterr().out


def test_equivariance_demo_runs_offline_and_improves_matching(tmp_path):
    beside = Path(sys.executable).with_name("fit3d-hub")
    exe = str(beside) if beside.exists() else shutil.which("fit3d-hub")
    proc = subprocess.run([exe, "demo", "--method", "equivariance", "--quick", "--output",
                           str(tmp_path / "demo")], capture_output=True, text=True,
                          timeout=600, check=False, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {m.group(1): [float(v) for v in m.group(2).split(" | ")]
            for m in re.finditer(r"^\| ([a-z-]+) \| ([0-9. |]+?) \|$", proc.stdout, re.M)}
    assert set(rows) == {"concat", "finetuned", "original", "zero-motion", "identity"}
    ape, pcdp_02 = 0, 3
    assert rows["concat"][ape] < rows["original"][ape]
    assert rows["concat"][pcdp_02] > rows["original"][pcdp_02]
    assert (tmp_path / "demo" / "model" / "refine.safetensors").is_file()


def test_gmae_demo_compares_with_pixel_mae_and_draws_the_layers(tmp_path):
    from demo.gmae import Settings, quick, run

    out = run(tmp_path / "demo", quick(Settings(train_scenes=1, views=8)), log=lambda _: None)
    rows = out["results"]
    assert set(rows) == {"GMAE", "pixel-MAE", "Sobel on the image", "random encoder"}
    for name in ("GMAE", "pixel-MAE"):
        assert 0 < rows[name]["masked PSNR (dB)"] < 60
        assert 0 <= rows[name]["edge ODS"] <= 1
        assert 0 <= rows[name]["patch-label probe acc"] <= 1
    with Image.open(out["pictures"]) as img:
        assert img.width > 7 * 96
    assert (tmp_path / "demo" / "gmae" / "gmae_decoder.safetensors").is_file()


def test_feedforward_demo_lifts_a_held_out_scene_and_fine_tunes_on_it(tmp_path):
    from demo.feedforward import Settings, quick, run

    out = run(tmp_path / "demo", quick(Settings(scenes=2, views=8)), log=lambda _: None)
    rows = out["lifting"]
    assert len(rows) == 3 and next(iter(rows)) == "feed-forward (one pass)"
    for row in rows.values():
        assert row["seconds"] > 0 and 0 < row["psnr"] < 60 and row["relative_l1"] > 0
    assert list(out["held_out"]) == ["scene_001"]  # the lifter never trained on it
    assert set(out["consistency"]) == {"original", "finetuned"}
    config = json.loads((tmp_path / "demo" / "model" / "config.json").read_text())
    assert config["fit3d"]["training"]["lifters"] == {"scene_001": "feedforward"}
    with Image.open(out["picture"]) as img:
        assert img.width > 8 * 100  # 3 views x 3 lifters
