"""SIGKILL at seeded random points, then resume: no partial output, the uninterrupted result.

Each command (Stage 1, Stage 2, the linear probe) runs once uninterrupted as the reference.
Then the same command is started, killed with SIGKILL at a random moment after it has saved
a checkpoint (the moment drawn from a fixed seed), started again, killed again, and finally
run to the end. After every kill every visible file of its output must be complete (hidden
temporaries of the killed writer may remain; the next run removes them); at the end the
output must equal the reference: Stage 2's weights and the probe's metrics to float
round-off, Stage 1's Gaussians within the tolerance of ``test_reliability``'s in-scene
resume test (1e-5).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from fit3d_hub import FiT3D
from scenes.synthetic import generate

ROOT = Path(__file__).resolve().parents[1]
SEED = 1123
KILLS = 2


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    from helpers import tiny_vit

    root = tmp_path_factory.mktemp("faults")
    generate(root / "scenes", scenes=2, views=6, size=32, seed=5)
    FiT3D(tiny_vit(0), tiny_vit(1)).save_pretrained(root / "model")
    return root


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": "1"}


def _complete(path: Path) -> None:
    """A visible output file that a reader would take as finished must be whole."""
    if path.suffix == ".safetensors":
        load_file(str(path))
    elif path.suffix == ".json":
        json.loads(path.read_text())
    elif path.suffix == ".png":
        with Image.open(path) as img:
            img.load()
    elif path.suffix == ".md":
        assert path.read_text().strip(), path


def _check_no_partial(root: Path) -> None:
    for path in root.rglob("*"):
        hidden = any(part.startswith(".") for part in path.relative_to(root).parts)
        if path.is_file() and not hidden:
            _complete(path)


def _kill_and_resume(cmd: list[str], cwd: Path, saved: str, outputs: Path,
                     rng: np.random.Generator) -> int:
    """Run ``cmd`` ``KILLS`` times, each killed with SIGKILL at a random moment after it
    wrote a new checkpoint (glob ``saved`` under ``cwd``), then once to the end. Returns how
    many runs were killed while still working."""
    killed = 0
    for _ in range(KILLS):
        before = set(cwd.glob(saved))
        proc = subprocess.Popen(cmd, env=_env(), cwd=cwd, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while proc.poll() is None and time.time() < deadline \
                and not (set(cwd.glob(saved)) - before):
            time.sleep(0.02)
        time.sleep(float(rng.uniform(0.0, 0.6)))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed += 1
        proc.wait()
        _check_no_partial(outputs)
    final = subprocess.run(cmd, env=_env(), cwd=cwd, capture_output=True, text=True,
                           timeout=300, check=False)
    assert final.returncode == 0, final.stderr[-3000:]
    _check_no_partial(outputs)
    leftovers = [p for p in outputs.rglob("*fit3d-tmp-*")] if outputs.exists() else []
    assert not leftovers, f"temporaries left after the final run: {leftovers}"
    return killed


def _run(cmd: list[str], cwd: Path) -> None:
    proc = subprocess.run(cmd, env=_env(), cwd=cwd, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_stage1_killed_twice_ends_like_the_uninterrupted_run(work):
    def cmd(out: str) -> list[str]:
        return [sys.executable, "-m", "training.fit3d.lift", "--scenes", "scenes", "--backbone",
                "model", "--output", out, "--iterations", "60", "--checkpoint-every", "10",
                "--max-points", "200", "--backend", "torch"]

    _run(cmd("lift_ref"), work)
    killed = _kill_and_resume(cmd("lift_killed"), work, "lift_killed/*/checkpoints/step_*",
                              work / "lift_killed", np.random.default_rng(SEED))
    assert killed >= 1
    for scene in ("scene_000", "scene_001"):
        a = load_file(str(work / "lift_ref" / scene / "feature_gaussians.safetensors"))
        b = load_file(str(work / "lift_killed" / scene / "feature_gaussians.safetensors"))
        assert a.keys() == b.keys()
        assert a["means"].shape == b["means"].shape  # the same Gaussian count
        for name in a:
            torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-5, msg=name)
        assert not (work / "lift_killed" / scene / "checkpoints").exists()


def test_stage2_killed_twice_ends_like_the_uninterrupted_run(work):
    _run([sys.executable, "-m", "training.fit3d.lift", "--scenes", "scenes", "--backbone", "model",
          "--output", "lifted", "--iterations", "20", "--max-points", "200", "--backend",
          "torch"], work)

    def cmd(out: str) -> list[str]:
        return [sys.executable, "-m", "training.fit3d.finetune", "--lifted", "lifted", "--backbone",
                "model", "--output", out, "--epochs", "4", "--lr", "1e-3", "--save-every",
                "1", "--backend", "torch", "--resume"]

    _run(cmd("ft_ref"), work)
    killed = _kill_and_resume(cmd("ft_killed"), work, "ft_killed/checkpoints/step_*",
                              work / "ft_killed", np.random.default_rng(SEED + 1))
    assert killed >= 1
    a = load_file(str(work / "ft_ref" / "model.safetensors"))
    b = load_file(str(work / "ft_killed" / "model.safetensors"))
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)


def test_probe_killed_twice_ends_like_the_uninterrupted_run(work):
    def cmd(out: str) -> list[str]:
        return [sys.executable, "-m", "eval.linear_probe", "--task", "seg", "--data",
                "synthetic:scenes", "--model", "model", "--iterations", "60", "--batch-size",
                "2", "--size", "28", "--save-every", "5", "--output", out, "--resume"]

    _run(cmd("probe_ref/results.json"), work)
    killed = _kill_and_resume(cmd("probe_killed/results.json"), work,
                              "probe_killed/results.checkpoints/step_*", work / "probe_killed",
                              np.random.default_rng(SEED + 2))
    assert killed >= 1
    a = json.loads((work / "probe_ref" / "results.json").read_text())["metrics"]
    b = json.loads((work / "probe_killed" / "results.json").read_text())["metrics"]
    assert a.keys() == b.keys()
    for variant in a:
        assert b[variant] == pytest.approx(a[variant], rel=1e-6, abs=1e-9), variant
    assert not (work / "probe_killed" / "results.checkpoints").exists()
