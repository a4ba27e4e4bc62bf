"""Stage 1 over a set of scenes: each scene's feature Gaussians fitted and written, this
process's share under Accelerate; finished scenes are skipped, unfinished ones continue from
their checkpoint, failing ones are reported and the others go on."""

from __future__ import annotations

import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from fit3d_hub import FiT3D, load_fit3d
from fit3d_hub.checkpoint import Checkpointer
from fit3d_hub.distributed import accelerator_session
from fit3d_hub.errors import FiT3DError, OutputWriteError, SettingsChangedError
from fit3d_hub.loading import model_id
from fit3d_hub.render.backends import resolve_backend
from fit3d_hub.runs import claim_output
from scenes.load import load_scene, scene_paths
from scenes.types import SceneError
from scenes.views import load_views
from training.common.loop import CHECKPOINTS, progress_bar
from training.fit3d.lift.config import LiftConfig
from training.fit3d.lift.record import LiftedMeta, is_finished, output_path, save_lifted
from training.fit3d.lift.teacher import compute_teacher_features
from training.fit3d.lift.trainer import LiftError, SceneViews, lift_scene, scene_training_views

COMMAND = "training.fit3d.lift"
MAY_CHANGE = ()
"""Stage 1 settings a continued scene may change: none (the schedule depends on them all)."""


def scene_checkpoints(out_dir: Path, scene_name: str, config: LiftConfig, backbone: str,
                      backend: str) -> Checkpointer:
    """A scene's in-progress checkpoints, beside its (future) lifted file; the settings
    record is the config, the backbone (a local folder by absolute path) and the
    rasterizer."""
    settings = {**config.to_json(), "backbone": model_id(backbone), "backend": backend}
    return Checkpointer(output_path(out_dir, scene_name).parent / CHECKPOINTS, settings,
                        MAY_CHANGE)


def lift_one(path: Path, teacher: FiT3D, config: LiftConfig, backend: str,
             device: torch.device, out_dir: Path, backbone: str, position: int = 0,
             progress: bool = True, checkpoint_every: int = 0) -> dict:
    """Lift one scene and write its output, continuing from its checkpoint if there is one;
    returns the metrics."""
    scene = load_scene(path)
    images = load_views(scene, config.downscale)
    feats = compute_teacher_features(teacher, images.images, device=device)
    views = SceneViews.from_images(images, feats, device)
    target = output_path(out_dir, scene.name)
    checkpoints = scene_checkpoints(out_dir, scene.name, config, backbone, backend)
    bar = progress_bar(scene.name, config.iterations, progress, position)

    def on_step(step: int, record: dict) -> None:
        bar.update(step + 1 - bar.n)
        bar.set_postfix(loss=f"{record['loss']:.4f}", psnr=f"{record['psnr']:.2f}",
                        gs=record["gaussians"], refresh=False)

    try:
        result = lift_scene(scene, views, config, backend=backend, device=device,
                            on_step=on_step, checkpoints=checkpoints,
                            checkpoint_every=checkpoint_every)
    finally:
        bar.close()
    meta = LiftedMeta(
        scene=scene.name, scene_path=str(path.resolve()), backbone=backbone,
        feature_dim=config.feature_dim, teacher_dim=int(feats.shape[1]),
        patch_size=teacher.patch_size, iterations=config.iterations, backend=backend,
        image_size=(views.width, views.height), downscale=config.downscale,
        sh_degree=config.sh_degree, views=len(scene.frames),
        training_views=scene_training_views(scene, config),
        splits=[f.split for f in scene.frames], metrics=result.metrics,
        config=config.to_json(),
        versions={"torch": torch.__version__, "python": platform.python_version()})
    save_lifted(target, result.gaussians, meta)
    checkpoints.remove()
    return result.metrics


def lift_scenes(scenes: str | Path, backbone: str, output: str | Path, config: LiftConfig, *,
                backend: str = "auto", cache_dir: str | None = None, progress: bool = True,
                checkpoint_every: int = 0, log: Callable[[str], None] = print) -> dict:
    """Lift every scene of ``scenes`` (this process's share under Accelerate) into
    ``output``; finished scenes are skipped, unfinished ones continue from their checkpoint
    (saved every ``checkpoint_every`` steps), failing ones are reported. Returns the summary.

    Raises :class:`~fit3d_hub.errors.FiT3DError` for bad input found before any work, and
    :class:`~fit3d_hub.errors.SettingsChangedError` when a scene's checkpoint was saved with
    other settings.
    """
    backend = resolve_backend(backend)  # a bad --backend creates no output folder
    settings = {"scenes": str(scenes), "backbone": model_id(backbone), "backend": backend,
                "config": config.to_json()}
    # Stage 1 always continues (finished scenes are skipped, unfinished ones resume from
    # their checkpoints): the claim is for the lock, so two lifts never share an output
    with accelerator_session() as accelerator, \
            claim_output(output, command=COMMAND, settings=settings, resume=True,
                         checkpoints=Path(output) / CHECKPOINTS, accelerator=accelerator):
        return _lift(accelerator, scenes, backbone, Path(output), config, backend=backend,
                     cache_dir=cache_dir, progress=progress,
                     checkpoint_every=checkpoint_every, log=log)


def _lift(accelerator, scenes: str | Path, backbone: str, out_dir: Path, config: LiftConfig, *,
          backend: str, cache_dir: str | None, progress: bool, checkpoint_every: int,
          log: Callable[[str], None]) -> dict:
    device = accelerator.device
    backend = resolve_backend(backend)
    paths = scene_paths(scenes)
    mine = paths[accelerator.process_index::accelerator.num_processes]
    for path in mine:  # refuse, before any work, to continue a scene with other settings
        if not is_finished(output_path(out_dir, path.name)):
            scene_checkpoints(out_dir, path.name, config, backbone, backend).check()
    teacher = load_fit3d(backbone, mode="original", device=device, cache_dir=cache_dir)
    failures, done = [], 0
    for path in mine:
        target = output_path(out_dir, path.name)
        if is_finished(target):
            log(f"{path.name}: already lifted ({target}), skipped")
            continue
        start = time.perf_counter()
        try:
            metrics = lift_one(path, teacher, config, backend, device, out_dir, backbone,
                               position=accelerator.process_index, progress=progress,
                               checkpoint_every=checkpoint_every)
        except (SettingsChangedError, OutputWriteError):
            raise
        except (SceneError, LiftError, FiT3DError, ValueError) as err:
            failures.append(path.name)
            print(f"{path.name}: FAILED: {err}", file=sys.stderr)
            continue
        done += 1
        log(f"{path.name}: psnr {metrics['psnr']:.2f} dB, feature L1 "
            f"{metrics['feature_l1']:.4f}, {metrics['gaussians']} Gaussians, "
            f"{time.perf_counter() - start:.1f} s -> {target}")
    return {"process": accelerator.process_index, "lifted": done, "failed": failures,
            "skipped": len(mine) - done - len(failures)}
