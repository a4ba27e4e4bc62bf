"""Training and eval against hostile checkpoints, NaNs, changed flags, full disks.

Each test runs the real command (in-process ``main`` where that is enough, a subprocess where
a resource limit or a kill is involved) on tiny scenes and a tiny ViT.
"""

from __future__ import annotations

import json
import os
import pickle
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import as_if_killed
from PIL import Image
from safetensors.torch import load_file

from eval.linear_probe import main as probe_main
from fit3d_hub import FiT3D
from fit3d_hub.checkpoint import STATE, Checkpointer
from scenes.load import load_scene
from scenes.synthetic import generate
from scenes.views import load_views
from training.fit3d.finetune.cli import main as finetune_main
from training.fit3d.lift.cli import main as lift_main
from training.fit3d.lift.config import LiftConfig
from training.fit3d.lift.record import OUTPUT_NAME
from training.fit3d.lift.trainer import SceneViews, lift_scene

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """Two tiny scenes, a tiny FiT3D repo as backbone, and the scenes lifted by Stage 1."""
    from helpers import tiny_vit

    root = tmp_path_factory.mktemp("reliability")
    generate(root / "scenes", scenes=2, views=6, size=32, seed=3)
    FiT3D(tiny_vit(0), tiny_vit(1)).save_pretrained(root / "model")
    assert lift_main(_lift_args(root, root / "lifted", "--iterations", "20")) == 0
    return root


def _lift_args(root: Path, out: Path, *extra: str) -> list[str]:
    return ["--scenes", str(root / "scenes"), "--backbone", str(root / "model"), "--output",
            str(out), "--max-points", "200", "--backend", "torch", *extra]


def _finetune_args(root: Path, out: Path, *extra: str) -> list[str]:
    return ["--lifted", str(root / "lifted"), "--backbone", str(root / "model"), "--output",
            str(out), "--backend", "torch", "--epochs", "1", "--save-every", "1", *extra]


def _probe_args(root: Path, out: Path, *extra: str) -> list[str]:
    return ["--task", "seg", "--data", f"synthetic:{root / 'scenes'}", "--model",
            str(root / "model"), "--iterations", "6", "--batch-size", "2", "--size", "28",
            "--output", str(out), "--save-every", "2", *extra]


class _Payload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _plant(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps(_Payload(marker)))


def _error_line(err: str) -> str:
    """The one error line (progress bars aside) of a failed command."""
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if "error" in ln.lower()
             or "FAILED" in ln]
    assert len(lines) == 1, err
    assert "Traceback" not in err, err
    return lines[0]


# 1. --resume never unpickles ---------------------------------------------------------------

def _interrupted_probe(root: Path, out: Path, monkeypatch) -> Path:
    """A probe stopped after 5 of 6 steps: its step-4 checkpoint is left."""
    import eval.linear_probe as probe

    real, calls = probe.head_loss, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(probe, "head_loss", failing)
    assert probe_main(_probe_args(root, out)) == 130  # Ctrl-C: the one error path's status
    monkeypatch.setattr(probe, "head_loss", real)
    found = sorted(out.with_suffix(".checkpoints").glob("step_*"))
    assert [p.name for p in found] == ["step_00000004"]
    return found[0]


LIFT_RESUMABLE = ("--iterations", "30", "--checkpoint-every", "10")


def _interrupted_lift(root: Path, out: Path) -> Path:
    """Stage 1 of scene_000 as ``training.fit3d.lift`` with ``LIFT_RESUMABLE`` runs it, stopped at
    step 20 of 30: its step-20 checkpoint is left."""
    from fit3d_hub.commandline import command
    from training.fit3d.lift.cli import DESCRIPTION, PROG
    from training.fit3d.lift.config import LiftConfig, LiftRun
    from training.fit3d.lift.run import scene_checkpoints

    run, config = command(PROG, DESCRIPTION, LiftRun, LiftConfig,
                          argv=_lift_args(root, out, *LIFT_RESUMABLE))
    config = config.scheduled()
    scene = load_scene(root / "scenes" / "scene_000")
    views = SceneViews.from_images(load_views(scene), torch.randn(6, 32, 1, 2).half(),
                                   torch.device("cpu"))
    ckpt = out / "scene_000" / "checkpoints"

    def stop(step, record):
        if step >= 15:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        lift_scene(scene, views, config, backend="torch", device=torch.device("cpu"),
                   on_step=stop, checkpoint_every=10,
                   checkpoints=scene_checkpoints(out, "scene_000", config, run.backbone,
                                                 "torch"))
    found = sorted(ckpt.glob("step_*"))
    assert [p.name for p in found] == ["step_00000020"]  # older ones pruned
    return found[0]


@pytest.mark.parametrize("kind", ["finetune", "lift", "probe"])
def test_resume_never_unpickles_a_planted_file(work, tmp_path, monkeypatch, capsys, kind):
    """A payload planted in each file of a checkpoint that is not safetensors (and in the
    files of Accelerate's old layout) is refused with one line naming the file, exit 1, and
    its command never runs."""
    marker = tmp_path / "pwned"
    out = tmp_path / "run"
    if kind == "finetune":
        assert finetune_main(_finetune_args(work, out)) == 0
        as_if_killed(out)
        ckpt = sorted((out / "checkpoints").glob("step_*"))[-1]
    elif kind == "lift":
        ckpt = _interrupted_lift(work, out)
    else:
        ckpt = _interrupted_probe(work, tmp_path / "probe.json", monkeypatch)
    capsys.readouterr()
    others = [p for p in ckpt.iterdir() if p.suffix != ".safetensors"]
    assert [p.name for p in others] == [STATE]  # our checkpoints hold nothing else to plant in
    pristine = tmp_path / "pristine"
    shutil.copytree(ckpt, pristine)
    # Accelerate's layout: the pickles its load_state reads with weights_only=False
    legacy = {"optimizer.bin", "random_states_0.pkl", "custom_checkpoint_0.pkl", "scaler.pt"}
    for planted in [STATE, *sorted(legacy)]:
        shutil.rmtree(ckpt)
        shutil.copytree(pristine, ckpt)
        if planted in legacy:  # a checkpoint in the old layout: no state.json at all
            (ckpt / STATE).unlink()
        _plant(ckpt / planted, marker)
        if kind == "finetune":
            code = finetune_main(_finetune_args(work, out, "--resume"))
        elif kind == "lift":
            code = lift_main(_lift_args(work, out, *LIFT_RESUMABLE, "--scenes",
                                        str(work / "scenes" / "scene_000")))
        else:
            code = probe_main(_probe_args(work, tmp_path / "probe.json", "--resume"))
        line = _error_line(capsys.readouterr().err)
        assert code == 1, (planted, line)
        assert str(ckpt / STATE) in line, line  # names the file it refused (or found missing)
        assert not marker.exists(), f"{planted}: the planted command ran"


# 2. a NaN never becomes a checkpoint or a repo ----------------------------------------------

def _all_saved_tensors_finite(root: Path) -> int:
    count = 0
    for path in root.rglob("*.safetensors"):
        for name, t in load_file(str(path)).items():
            if t.is_floating_point():
                assert torch.isfinite(t).all(), f"{path}: {name} is not finite"
        count += 1
    return count


def test_nan_never_becomes_a_checkpoint_or_output(work, tmp_path, capsys):
    out = tmp_path / "ft"
    code = finetune_main(_finetune_args(work, out, "--lr", "inf"))
    line = _error_line(capsys.readouterr().err)
    assert code == 1
    assert "non-finite by step 1" in line and "last good checkpoint is none" in line, line
    assert not (out / "model.safetensors").exists()
    _all_saved_tensors_finite(out)

    lifted = tmp_path / "lifted"
    code = lift_main(_lift_args(work, lifted, "--iterations", "30", "--checkpoint-every", "5",
                                "--feature-lr", "inf"))
    err = capsys.readouterr().err
    assert code == 1
    assert "scene_000: FAILED:" in err and "scene_001: FAILED:" in err, err
    assert "non-finite" in err or "loss became nan" in err, err
    assert not list(lifted.rglob(OUTPUT_NAME))
    _all_saved_tensors_finite(lifted)


# 3. resuming with other settings is refused -------------------------------------------------

def test_resume_with_changed_settings_exits_2_listing_each_difference(work, tmp_path, capsys,
                                                                     monkeypatch):
    out = tmp_path / "ft"
    assert finetune_main(_finetune_args(work, out)) == 0
    capsys.readouterr()
    code = finetune_main(_finetune_args(work, out, "--resume", "--lr", "5e-5",
                                        "--batch-size", "1"))
    line = _error_line(capsys.readouterr().err)
    assert code == 2
    assert "batch_size: 2 -> 1" in line and "lr: 1e-05 -> 5e-05" in line, line
    # more epochs is what a resume is for
    assert finetune_main(_finetune_args(work, out, "--resume", "--epochs", "2")) == 0
    assert "resumed from" in capsys.readouterr().out

    lifted = tmp_path / "lifted"
    _interrupted_lift(work, lifted)
    code = lift_main(_lift_args(work, lifted, *LIFT_RESUMABLE, "--feature-lr", "1e-3"))
    line = _error_line(capsys.readouterr().err)
    assert code == 2 and "lr.features: 6.25e-05 -> 0.001" in line, line

    probe_out = tmp_path / "probe.json"
    _interrupted_probe(work, probe_out, monkeypatch)
    capsys.readouterr()
    code = probe_main(_probe_args(work, probe_out, "--resume", "--lr", "0.5"))
    line = _error_line(capsys.readouterr().err)
    assert code == 2 and "protocol.lr: 0.001 -> 0.5" in line, line


# 4. Stage 1 continues inside a scene ---------------------------------------------------------

def test_stage1_continues_inside_a_scene_like_an_uninterrupted_run(work, tmp_path):
    """Stopped at step 30 of 60 with a checkpoint at 25, continued across densification
    (steps 30, 40) and an opacity reset (step 30), the scene ends as the uninterrupted one:
    same Gaussian count, tensors and losses within 1e-5 (on CPU both runs do the same
    arithmetic; the tolerance only absorbs summation order)."""
    scene = load_scene(work / "scenes" / "scene_001")
    views = SceneViews.from_images(load_views(scene), torch.randn(6, 32, 1, 2).half(),
                                   torch.device("cpu"))
    config = LiftConfig(iterations=60, max_points=200, refine_start_iter=10, refine_every=10,
                        refine_stop_iter=45, reset_every=30, sh_degree_interval=20)
    kwargs = {"backend": "torch", "device": torch.device("cpu")}
    straight = lift_scene(scene, views, config, **kwargs)

    def stop(step, record):
        if step >= 30:
            raise KeyboardInterrupt

    ckpt = tmp_path / "checkpoints"
    saves = Checkpointer(ckpt, config.to_json())
    with pytest.raises(KeyboardInterrupt):
        lift_scene(scene, views, config, on_step=stop, checkpoints=saves, checkpoint_every=25,
                   **kwargs)
    assert [p.name for p in ckpt.glob("step_*")] == ["step_00000025"]
    resumed = lift_scene(scene, views, config, checkpoints=saves, checkpoint_every=25,
                         **kwargs)
    assert straight.metrics["opacity_resets"] == resumed.metrics["opacity_resets"] == 1
    assert straight.gaussians.num_gaussians == resumed.gaussians.num_gaussians
    assert straight.gaussians.num_gaussians != 200  # densification did run
    a, b = straight.gaussians.state_tensors(), resumed.gaussians.state_tensors()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-5, msg=name)
    assert len(straight.history) == len(resumed.history)
    for x, y in zip(straight.history, resumed.history, strict=True):
        assert x == pytest.approx(y, rel=1e-5), (x, y)


# 5. every output is atomic; a full disk is one line -----------------------------------------

def _limited(cmd: list[str], limit: int, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``cmd`` with files limited to ``limit`` bytes (``ulimit -f``)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
           "PYTHONDONTWRITEBYTECODE": "1"}

    def limit_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=300,
                          preexec_fn=limit_files, check=False)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "fit3d_hub.cli", *args]


def _module(name: str, *args: str) -> list[str]:
    return [sys.executable, "-m", name, *args]


@pytest.mark.parametrize("kind", ["features", "card", "correspondence", "probe", "finetune",
                                  "lift", "demo"])
def test_full_disk_keeps_the_old_output_and_is_one_line(work, tmp_path, kind):
    """With files limited to 2 kB, each command exits 1 with one line naming what it could
    not write; the file from before is byte for byte intact and no temporary is left."""
    old = b"previous output\n"
    model = str(work / "model")
    if kind == "features":
        noise = np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)
        Image.fromarray(noise).save(tmp_path / "in.png")  # noise: the PNG is over 2 kB
        target = tmp_path / "pca.png"
        cmd = _cli("features", str(tmp_path / "in.png"), "--model", model, "--output",
                   str(target))
    elif kind == "card":
        repo = tmp_path / "repo"
        shutil.copytree(work / "model", repo)
        target = repo / "README.md"
        (tmp_path / "results.json").write_text(json.dumps({"results": [
            {"task": "depth-estimation", "dataset": "synthetic", "metric": "RMSE",
             "value": 0.25}]}))
        cmd = _cli("card", str(repo), "--results", str(tmp_path / "results.json"))
    elif kind == "correspondence":
        target = tmp_path / "corr.json"
        cmd = _module("eval.correspondence", "--model", model, "--scenes",
                      str(work / "scenes"), "--pairs", "1", "--queries", "20", "--output",
                      str(target))
    elif kind == "probe":
        target = tmp_path / "probe.json"
        cmd = _module("eval.linear_probe", *_probe_args(work, target, "--save-every", "0"))
    elif kind == "finetune":
        out = tmp_path / "ft"
        out.mkdir()
        target = out / "model.safetensors"
        cmd = _module("training.fit3d.finetune", *_finetune_args(work, out, "--save-every", "0"))
    elif kind == "lift":
        target = tmp_path / "lifted" / "scene_000" / OUTPUT_NAME
        cmd = _module("training.fit3d.lift", *_lift_args(work, tmp_path / "lifted", "--iterations",
                                                   "10", "--scenes",
                                                   str(work / "scenes" / "scene_000")))
    else:
        target = tmp_path / "demo" / "views.png"
        cmd = _cli("demo", "--quick", "--output", str(tmp_path / "demo"))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(old)
    proc = _limited(cmd, 2048, tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    line = _error_line(proc.stderr)
    assert "could not write" in line and "File too large" in line, line
    assert target.read_bytes() == old
    assert not [p for p in tmp_path.rglob("*fit3d-tmp-*")], "a temporary was left behind"


def test_one_process_may_run_sessions_of_different_precision():
    from fit3d_hub.distributed import accelerator_session

    # a notebook (or this test run) trains in fp32, then in bf16, then in fp32 again
    for precision in ("no", "bf16", "no"):
        with accelerator_session(mixed_precision=precision) as accelerator:
            assert accelerator.mixed_precision == precision


@pytest.mark.parametrize("damage, message", [
    ("loop", "loop: expected the fields"),  # a progress field deleted by hand
    ("step", "does not match the checkpoint's name"),  # progress set back to -1
    ("rng", "rng: CPU generator state has 7"),  # an RNG state of the wrong size
])
def test_stage1_refuses_a_damaged_checkpoint_in_one_line(work, tmp_path, capsys, damage,
                                                         message):
    out = tmp_path / "run"
    ckpt = _interrupted_lift(work, out)
    state = json.loads((ckpt / STATE).read_text())
    tensors = load_file(str(ckpt / "tensors.safetensors"))
    if damage == "loop":
        state["parts"]["loop"].popitem()
    elif damage == "step":
        state["progress"]["step"] = -1
    else:
        tensors = {k: (torch.zeros(7, dtype=torch.uint8) if k.startswith("rng.") else v)
                   for k, v in tensors.items()}
    (ckpt / STATE).write_text(json.dumps(state))
    from safetensors.torch import save_file

    save_file(tensors, str(ckpt / "tensors.safetensors"))
    capsys.readouterr()
    code = lift_main(_lift_args(work, out, *LIFT_RESUMABLE, "--scenes",
                                str(work / "scenes" / "scene_000")))
    line = _error_line(capsys.readouterr().err)
    assert code == 1 and str(ckpt) in line and message in line, line
    assert not (out / "scene_000" / OUTPUT_NAME).exists()
