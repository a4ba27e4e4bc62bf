"""Two CPU processes (torchrun + Accelerate's MULTI_CPU, gloo): sharding and pooling work."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fit3d_hub import FiT3D
from scenes.synthetic import generate

ROOT = Path(__file__).resolve().parents[1]


def _torchrun(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
           "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    # --standalone: torchrun picks its own free rendezvous port (no pick-then-bind race)
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node", "2", "-m", module, *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from helpers import tiny_vit

    root = tmp_path_factory.mktemp("mp")
    generate(root / "scenes", scenes=2, views=4, size=32, seed=0)
    FiT3D(tiny_vit(0), tiny_vit(1)).save_pretrained(root / "model")
    return root


def test_lift_shards_scenes_over_processes(setup):
    proc = _torchrun("training.fit3d.lift", "--scenes", "scenes", "--backbone", "model",
                     "--output", "lifted", "--iterations", "10", "--max-points", "200",
                     cwd=setup)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert '"process": 0, "lifted": 1' in proc.stdout, proc.stdout
    assert '"process": 1, "lifted": 1' in proc.stdout
    assert len(list((setup / "lifted").glob("*/feature_gaussians.safetensors"))) == 2


def test_probe_and_correspondence_pool_results_across_processes(setup):
    proc = _torchrun("eval.linear_probe", "--task", "seg", "--data", "synthetic:scenes",
                     "--model", "model", "--iterations", "5", "--batch-size", "2", "--size",
                     "28", cwd=setup)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("| concat |") == 1, proc.stdout  # only the main process reports
    proc = _torchrun("eval.correspondence", "--model", "model", "--scenes", "scenes",
                     "--pairs", "2", "--queries", "20", cwd=setup)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("| concat |") == 1, proc.stdout


def test_gmae_trains_under_ddp_and_resumes_bit_identically(setup):
    import numpy as np
    from helpers import as_if_killed
    from PIL import Image

    from fit3d_hub import load_fit3d

    folder = setup / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), np.uint8)).save(folder / f"{i}.png")
    tiny = ["--images", "images", "--architecture", "vit_small_patch16_224", "--embed-dim",
            "32", "--depth", "1", "--num-heads", "2", "--patch-size", "8", "--image-size",
            "16", "--num-gaussians", "8", "--decoder-dim", "16", "--decoder-depth", "1",
            "--decoder-heads", "2", "--batch-size", "2", "--workers", "0", "--backend",
            "torch", "--save-every", "1"]
    # one run of 2 epochs, checkpointing every step; then its last step again from the
    # checkpoint before, mid-epoch (two launches: the straight run is the reference)
    proc = _torchrun("training.gmae", *tiny, "--output", "run", "--epochs", "2", cwd=setup)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # 8 images dealt over 2 processes x 2 per batch: 2 optimizer steps per epoch (1 process: 4)
    assert "wrote run (4 steps" in proc.stdout, proc.stdout
    shutil.copytree(setup / "run", setup / "straight")
    checkpoints = sorted((setup / "run" / "checkpoints").iterdir())
    assert [c.name for c in checkpoints] == ["step_00000003", "step_00000004"]
    shutil.rmtree(checkpoints[-1])
    as_if_killed(setup / "run")
    proc = _torchrun("training.gmae", *tiny, "--output", "run", "--epochs", "2", "--resume",
                     cwd=setup)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from" in proc.stdout and "step_00000003" in proc.stdout, proc.stdout
    shutil.move(setup / "run", setup / "resumed")
    a, b = load_fit3d(setup / "straight"), load_fit3d(setup / "resumed")
    for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y)


def test_feedforward_lifter_trains_under_ddp(setup):
    from training.fit3d.feedforward.run import load_lifter

    proc = _torchrun("training.fit3d.feedforward", "--scenes", "scenes", "--backbone", "model",
                     "--output", "lifter", "--steps", "3", "--save-every", "0",
                     "--feature-dim", "8", "--width", "8", "--backend", "torch",
                     "--context-views", "2", "--target-views", "1", cwd=setup)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("training scene(s)") == 1, proc.stdout  # the main process says
    lifter, meta = load_lifter(setup / "lifter")
    assert meta["steps"] == 3 and meta["scenes"] == ["scene_000", "scene_001"]
    assert all(bool(p.isfinite().all()) for p in lifter.parameters())
