"""Run ownership: one run per output folder, never two runs mixed, and checkpoint progress
checked against the checkpoint's own contents before training resumes. Driven through the
GMAE trainer (the fastest); every trainer claims its output the same way
(:func:`fit3d_hub.runs.claim_output`)."""

from __future__ import annotations

import fcntl
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from fit3d_hub import load_fit3d
from fit3d_hub.runs import LOCK, RECORD
from training.gmae.cli import main

TINY = ["--architecture", "vit_small_patch16_224", "--embed-dim", "32", "--depth", "2",
        "--num-heads", "2", "--patch-size", "8", "--image-size", "16", "--num-gaussians",
        "16", "--decoder-dim", "32", "--decoder-depth", "1", "--decoder-heads", "2",
        "--batch-size", "2", "--base-lr", "0.05", "--workers", "0", "--backend", "torch",
        "--save-every", "1"]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("runs") / "images" / "a"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), np.uint8)).save(folder / f"{i}.png")
    return folder.parent


def _train(images, output, *extra) -> int:
    return main(["--images", str(images), "--output", str(output), *TINY, *extra])


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != LOCK}


def _weights(folder: Path) -> list[torch.Tensor]:
    return list(load_fit3d(folder).state_dict().values())


def test_a_second_run_never_mixes_with_the_first(images, tmp_path, capsys):
    reference = tmp_path / "reference"
    assert _train(images, reference, "--epochs", "2") == 0
    out = tmp_path / "out"
    assert _train(images, out, "--epochs", "1", "--seed", "7") == 0
    record = json.loads((out / RECORD).read_text())
    assert record["finished"] is True and record["command"] == "training.gmae"
    before = _snapshot(out)
    # a new run (no --resume) into a folder holding another run's checkpoints: refused
    capsys.readouterr()
    assert _train(images, out, "--epochs", "2") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds checkpoints of an earlier run" in err[0]
    assert "--overwrite" in err[0] and _snapshot(out) == before
    # --overwrite starts over: the result is the uninterrupted run's
    assert _train(images, out, "--epochs", "2", "--overwrite") == 0
    for a, b in zip(_weights(reference), _weights(out), strict=True):
        assert torch.equal(a, b)
    # --resume of the finished run changes nothing
    finished = _snapshot(out)
    assert _train(images, out, "--epochs", "2", "--resume") == 0
    assert "nothing to do" in capsys.readouterr().out
    assert _snapshot(out) == finished


def test_a_folder_another_run_holds_is_refused(images, tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    (out / RECORD).write_text(json.dumps({"command": "training.gmae", "pid": 4242,
                                          "host": "elsewhere", "started": "earlier"}))
    with open(out / LOCK, "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert _train(images, out, "--epochs", "1") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "another run is writing here" in err[0] and "pid 4242" in err[0]
    assert not (out / "model.safetensors").exists()
    assert _train(images, out, "--epochs", "1") == 0  # the lock went with its holder


def _checkpoint(out: Path) -> Path:
    return sorted((out / "checkpoints").glob("step_*"))[-1]


@pytest.mark.parametrize("damage, message", [
    (lambda s, t: s["progress"].update(step=-1) or s["parts"]["progress"].update(step=-1),
     "progress"),
    (lambda s, t: s["progress"].update(step=10**9) or s["parts"]["progress"].update(
        step=10**9), "progress"),
    (lambda s, t: s["parts"]["progress"].update(micro="x"), "progress"),
    (lambda s, t: t.update({"rng.0.cpu": torch.zeros(7, dtype=torch.uint8)}), "rng"),
    (lambda s, t: t.update({k: torch.zeros(3) for k in t if k.endswith("exp_avg")}),
     "optimizer"),
    (lambda s, t: s["parts"].pop("progress"), "progress"),
])
def test_hand_edited_progress_is_refused_before_training(images, tmp_path, capsys, damage,
                                                         message):
    out = tmp_path / "run"
    assert _train(images, out, "--epochs", "1") == 0
    folder = _checkpoint(out)
    state = json.loads((folder / "state.json").read_text())
    tensors = load_file(str(folder / "tensors.safetensors"))
    damage(state, tensors)
    (folder / "state.json").write_text(json.dumps(state))
    save_file(tensors, str(folder / "tensors.safetensors"))
    before = _snapshot(out)
    capsys.readouterr()
    assert _train(images, out, "--epochs", "2", "--resume") == 1
    err = [line for line in capsys.readouterr().err.splitlines()
           if line.strip() and "it/s]" not in line]
    assert len(err) == 1 and str(folder) in err[0] and re.search(message, err[0]), err
    after = _snapshot(out)
    assert {k: v for k, v in after.items() if k != RECORD} == \
        {k: v for k, v in before.items() if k != RECORD}
