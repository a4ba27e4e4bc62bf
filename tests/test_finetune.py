"""Stage 2 on CPU: the proof that lift -> fine-tune makes features more multi-view consistent,
plus resume, data checks and the exported repo."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from demo.common import demo_backbone
from demo.fit3d import Settings, held_out_pairs, measure_consistency
from eval.consistency import consistency
from fit3d_hub import load_fit3d
from scenes.correspondence import Correspondences, correspondences
from scenes.holdout import training_views
from scenes.io import load_depth
from scenes.load import load_scene, scene_paths
from training.fit3d.finetune.data import LiftedDataError, check_memory, find_lifted
from training.fit3d.finetune.trainer import epoch_order
from training.fit3d.lift.cli import main as lift_main
from training.fit3d.lift.config import SHORT_RUN_RATES

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = Settings(views=16, size=48, lift_iterations=200, epochs=10, lr=1e-3)


@pytest.fixture(scope="module")
def lifted(tmp_path_factory):
    """One synthetic scene lifted with the demo backbone; views 0, 4, 8, 12 held out."""
    from scenes.synthetic import generate

    root = tmp_path_factory.mktemp("stage2")
    generate(root / "scenes", scenes=1, views=SETTINGS.views, size=SETTINGS.size, seed=0)
    demo_backbone(0).save_pretrained(root / "backbone", include_base=True)
    code = lift_main(["--scenes", str(root / "scenes"), "--backbone", str(root / "backbone"),
                      "--output", str(root / "lifted"), "--iterations",
                      str(SETTINGS.lift_iterations), "--holdout-every", "4",
                      "--max-points", "2000", "--backend", "torch",
                      "--feature-lr", str(SHORT_RUN_RATES.features),
                      "--decoder-lr", str(SHORT_RUN_RATES.decoder)])
    assert code == 0
    return root


def _finetune(root: Path, output: Path, *extra: str) -> list[str]:
    """Stage 2 needs only Stage 1's output: scene folders and held-out views are recorded."""
    return ["--lifted", str(root / "lifted"), "--backbone", str(root / "backbone"),
            "--output", str(output), "--backend", "torch", *extra]


@pytest.fixture(scope="module")
def finetuned(lifted):
    from training.fit3d.finetune.cli import main

    out = lifted / "model"
    code = main(_finetune(lifted, out, "--epochs", str(SETTINGS.epochs), "--lr",
                          str(SETTINGS.lr), "--lr-drop", "--save-every", "0"))
    assert code == 0
    return out


def test_fine_tuned_features_are_more_multiview_consistent(lifted, finetuned):
    model = load_fit3d(finetuned)
    scene_dir = lifted / "scenes" / "scene_000"
    pairs = held_out_pairs(SETTINGS.views, 4)  # views seen by neither stage
    ratios = measure_consistency(model, scene_dir, pairs)
    # The untrained model compares its original branch with itself: improvement 0.
    untrained = load_fit3d(lifted / "backbone")
    same = measure_consistency(untrained, scene_dir, pairs)
    assert abs(same["original"] - same["finetuned"]) < 1e-6
    assert ratios["original"] == pytest.approx(same["original"], abs=1e-6)
    assert ratios["finetuned"] < ratios["original"] - 0.05, ratios


def test_exported_repo_records_provenance(finetuned):
    from fit3d_hub.repo_format import validate_repo
    from fit3d_hub.schema import read_config

    config = validate_repo(finetuned)
    training = config.fit3d.training
    assert training["scenes"] == ["scene_000"] and training["steps"] > 0
    assert training["hyperparameters"]["lr"] == SETTINGS.lr
    assert training["hyperparameters"]["weight_decay"] == 1e-4
    assert (finetuned / "README.md").read_text().startswith("---")
    assert read_config(finetuned / "config.json").architecture == "vit_small_patch8_224"


def test_epoch_order_covers_training_views_once_and_is_seeded():
    views = [training_views(["train"] * 5, 4), training_views(["train"] * 3, 4)]
    order = epoch_order(views, epoch=0, seed=1)
    assert sorted((s, v) for s, v, _ in order) == [(0, 1), (0, 2), (0, 3), (1, 1), (1, 2)]
    assert order == epoch_order(views, epoch=0, seed=1)
    assert order != epoch_order(views, epoch=1, seed=1)


def test_held_out_view_rule():
    splits = ["test", "train", "train", "train", "test", "train"]
    assert training_views(splits) == [0, 1, 2, 3, 4, 5]  # the authors train on test frames
    assert training_views(splits, hold_out_test=True) == [1, 2, 3, 5]
    assert training_views(splits, holdout_every=3) == [1, 2, 4, 5]
    assert training_views(splits, 3, hold_out_test=True) == [1, 2, 5]
    assert training_views(["test", "test"], hold_out_test=True) == [0, 1]  # never empty


def test_stage2_leaves_test_frames_out_as_the_authors_stage2_does():
    from dataclasses import replace

    from training.fit3d.finetune.data import stage2_views
    from training.fit3d.lift.record import LiftedMeta

    meta = LiftedMeta("s", 5, (8, 6), training_views=[0, 1, 2, 3, 4],
                      splits=["test", "train", "train", "train", "test"])
    assert stage2_views(meta) == [1, 2, 3]  # Stage 1 saw the test frames, Stage 2 does not
    assert stage2_views(replace(meta, training_views=[1, 3])) == [1, 3]
    assert stage2_views(LiftedMeta("s", 4, (8, 6))) == [0, 1, 2, 3]  # older: every view


def test_stage2_trains_on_the_views_stage1_recorded(lifted):
    from training.fit3d.finetune.data import LiftedStore, find_lifted

    records = find_lifted(lifted / "lifted")
    assert [r.scene_dir for r in records] == [(lifted / "scenes" / "scene_000").resolve()]
    store = LiftedStore(records, lazy=True)
    assert store.metas[0].training_views == [i for i in range(16) if i % 4]
    assert store.training_views() == [store.metas[0].training_views]


def test_scenes_override_finds_moved_data(lifted, tmp_path):
    import shutil

    from training.fit3d.finetune.data import find_lifted, load_lifted_scene

    moved = tmp_path / "elsewhere"
    shutil.copytree(lifted / "scenes", moved)
    records = find_lifted(lifted / "lifted", scene_paths(moved))
    assert [r.scene_dir for r in records] == [moved / "scene_000"]
    assert load_lifted_scene(records[0]).views.num_views == 16
    with pytest.raises(LiftedDataError, match="no finished Stage 1 scene for any of the 1"):
        find_lifted(lifted / "lifted", [tmp_path / "other_scene"])


def _run(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen([sys.executable, "-m", "training.fit3d.finetune", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_killed_run_resumes_to_the_uninterrupted_result(lifted, tmp_path):
    common = ["--epochs", "3", "--lr", "1e-3", "--save-every", "2"]
    straight = _run(_finetune(lifted, tmp_path / "straight", *common))
    log = straight.communicate(timeout=600)[0]
    assert straight.returncode == 0, log

    killed = _run(_finetune(lifted, tmp_path / "killed", *common))
    checkpoints = tmp_path / "killed" / "checkpoints"
    deadline = time.time() + 300
    while time.time() < deadline and killed.poll() is None and \
            not (checkpoints / "step_00000004").exists():
        time.sleep(0.05)
    assert killed.poll() is None, "finished before it could be killed"
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "killed" / "model.safetensors").exists()
    resumed = _run(_finetune(lifted, tmp_path / "killed", *common, "--resume"))
    log = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, log
    assert "resumed from" in log
    a = load_fit3d(tmp_path / "straight", mode="finetuned")
    b = load_fit3d(tmp_path / "killed", mode="finetuned")
    for (name, pa), pb in zip(a.finetuned.state_dict().items(),
                              b.finetuned.state_dict().values(), strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6, msg=name)


def test_missing_lifted_scenes_and_memory_check(lifted, tmp_path, monkeypatch):
    with pytest.raises(LiftedDataError, match="no finished Stage 1 scene"):
        find_lifted(tmp_path)
    pairs = find_lifted(lifted / "lifted")
    assert check_memory(pairs) > 0
    monkeypatch.setattr("training.fit3d.finetune.data.available_memory", lambda: 1024)
    with pytest.raises(LiftedDataError, match="pass --lazy"):
        check_memory(pairs)


def test_nan_loss_stops_with_the_last_checkpoint_kept(lifted, tmp_path, monkeypatch, capsys):
    import training.fit3d.finetune.trainer as trainer
    from training.fit3d.finetune.cli import main

    real = trainer.masked_l1
    calls = []

    def poisoned(pred, target, mask):
        calls.append(1)
        loss = real(pred, target, mask)
        return loss * float("nan") if len(calls) > 2 else loss

    monkeypatch.setattr(trainer, "masked_l1", poisoned)
    code = main(_finetune(lifted, tmp_path / "nan", "--epochs", "2", "--save-every", "1"))
    assert code == 1
    err = capsys.readouterr().err
    assert "loss became nan at step 3" in err  # the third step's loss: two steps were saved
    assert err.rstrip().endswith(str(tmp_path / "nan" / "checkpoints" / "step_00000002"))
    assert (tmp_path / "nan" / "checkpoints" / "step_00000002").is_dir()
    assert not (tmp_path / "nan" / "model.safetensors").exists()


def test_consistency_metric_on_known_features():
    # Features equal to the pixel's x coordinate pattern: identical maps and identity matches
    # give distance 0; shuffled matches give a positive distance.
    h, w = 8, 8
    xs = torch.linspace(0, 1, w).expand(h, w)
    feats = torch.stack([torch.cos(3 * xs), torch.sin(3 * xs)])
    uv = np.stack(np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5), -1).reshape(-1, 2)
    res = consistency(feats, feats, Correspondences(uv, uv), w, h)
    assert res["matched"] < 1e-6 and res["random"] > 0.05 and res["ratio"] < 1e-4


def test_correspondences_respect_occlusion(lifted):
    scene = load_scene(lifted / "scenes" / "scene_000")
    a, b = scene.frames[0], scene.frames[1]
    da, db = load_depth(a.depth_path, 1000.0), load_depth(b.depth_path, 1000.0)
    matches = correspondences(a.camera, da, b.camera, db)
    world = a.camera.unproject(matches.uv_a, da[(matches.uv_a[:, 1]).astype(int),
                                                (matches.uv_a[:, 0]).astype(int)])
    uv_b, z_b = b.camera.project(world)
    np.testing.assert_allclose(uv_b, matches.uv_b)
    seen = db[uv_b[:, 1].astype(int), uv_b[:, 0].astype(int)]
    assert np.all(np.abs(seen - z_b) < 0.03 * z_b)
