"""`python -m training.fit3d.lift`: resumes after a kill, isolates failing scenes, checks
arguments."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fit3d_hub import FiT3D
from scenes.synthetic import generate
from training.fit3d.lift.record import OUTPUT_NAME, read_meta

ROOT = Path(__file__).resolve().parents[1]


def _lift(*args: str) -> list[str]:
    return [sys.executable, "-m", "training.fit3d.lift", *args]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    from helpers import tiny_vit

    path = tmp_path_factory.mktemp("teacher") / "tiny"
    FiT3D(tiny_vit(0), tiny_vit(1)).save_pretrained(path)
    return path


def test_killed_run_resumes_without_redoing_finished_scenes(tmp_path, teacher_dir):
    scenes = tmp_path / "scenes"
    generate(scenes, scenes=2, views=6, size=32, seed=1)
    out = tmp_path / "out"
    cmd = _lift("--scenes", str(scenes), "--backbone", str(teacher_dir), "--output", str(out),
                "--iterations", "120", "--max-points", "300")
    proc = subprocess.Popen(cmd, env=_env(), cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    first = out / "scene_000" / OUTPUT_NAME
    deadline = time.time() + 240
    while not first.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert first.exists(), proc.communicate()[0] if proc.poll() is not None else "timeout"
    time.sleep(0.5)  # well inside scene_001's 120 iterations
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    second = out / "scene_001" / OUTPUT_NAME
    assert not second.exists()
    from fit3d_hub.runs import LOCK, RECORD

    leftovers = [p.name for p in out.rglob("*") if p.is_file()
                 and p.name not in (OUTPUT_NAME, RECORD, LOCK)]  # the run's record and lock
    assert leftovers == []  # a kill leaves no half-written file behind
    finished = first.read_bytes()

    again = subprocess.run(cmd, env=_env(), cwd=tmp_path, capture_output=True, text=True,
                           timeout=600, check=False)
    assert again.returncode == 0, again.stderr
    assert "scene_000: already lifted" in again.stdout
    assert first.read_bytes() == finished
    meta = read_meta(second)
    assert meta.iterations == 120 and meta.backend == "torch"
    assert meta.camera_convention.startswith("opencv")
    assert meta.teacher_dim == 32 and meta.feature_dim == 64


def test_failing_scene_is_reported_and_the_others_go_on(tmp_path, teacher_dir):
    scenes = tmp_path / "scenes"
    generate(scenes, scenes=2, views=4, size=32, seed=2)
    (scenes / "scene_001" / "transforms.json").write_text("{ broken")
    proc = subprocess.run(
        _lift("--scenes", str(scenes), "--backbone", str(teacher_dir), "--output",
              str(tmp_path / "out"), "--iterations", "20", "--max-points", "200"),
        env=_env(), cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 1
    assert "scene_001: FAILED:" in proc.stderr and "malformed JSON" in proc.stderr
    assert (tmp_path / "out" / "scene_000" / OUTPUT_NAME).exists()
    assert not (tmp_path / "out" / "scene_001").exists()


@pytest.mark.parametrize("args, message", [
    (["--iterations", "0"], "--iterations must be a positive integer"),
    (["--downscale", "0.5"], "--downscale must be >= 1"),
    (["--backend", "gsplat"], "--backend gsplat needs CUDA"),
])
def test_bad_arguments(tmp_path, teacher_dir, capsys, args, message):
    from training.fit3d.lift.cli import main

    generate(tmp_path / "scenes", scenes=1, views=3, size=16, seed=0)
    argv = ["--scenes", str(tmp_path / "scenes"), "--backbone", str(teacher_dir), "--output",
            str(tmp_path / "out"), *args]
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own usage errors
        code = exit_.code
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
