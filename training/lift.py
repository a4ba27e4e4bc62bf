"""Stage 1: lift a backbone's 2D features into 3D feature Gaussians, one scene at a time.

    accelerate launch -m training.lift --scenes PATH --backbone NAME_OR_DIR --output DIR \
        [--iterations 30000] [--feature-dim 64] [--backend auto|gsplat|torch] [--downscale F]

(plain ``python -m training.lift`` works too). Scenes are sharded over the Accelerate
processes; each finished scene is written atomically to ``DIR/<scene>/
feature_gaussians.safetensors`` and skipped on the next run, so a killed run resumes.
A scene that fails is reported and the others go on.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm.auto import tqdm

from fit3d_hub import FiT3DError, load_fit3d
from fit3d_hub.checkpoint import SettingsChangedError, check_settings
from fit3d_hub.distributed import accelerator_session
from fit3d_hub.errors import OutputWriteError, exit_status
from scenes.load import load_scene, scene_paths
from scenes.types import SceneError
from scenes.views import load_views
from training.lifting.gaussians import LearningRates
from training.lifting.io import is_finished, output_path, save_lifted
from training.lifting.rasterize import BACKENDS, resolve_backend
from training.lifting.resume import (
    MAY_CHANGE,
    checkpoint_dir,
    has_checkpoint,
    latest,
    saved_settings,
)
from training.lifting.resume import remove as remove_checkpoint
from training.lifting.teacher import compute_teacher_features
from training.lifting.trainer import (
    LiftConfig,
    LiftError,
    SceneViews,
    lift_scene,
    scene_training_views,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.lift", description=__doc__.split("\n")[0])
    p.add_argument("--scenes", required=True,
                   help="a folder of scene folders, one scene folder, or a text file of paths")
    p.add_argument("--backbone", required=True, help="registry name, hub repo id or directory")
    p.add_argument("--output", required=True, help="output folder (one subfolder per scene)")
    p.add_argument("--iterations", type=int, default=30_000)
    p.add_argument("--feature-dim", type=int, default=64)
    p.add_argument("--backend", default="auto", choices=BACKENDS)
    p.add_argument("--downscale", type=float, default=1.0,
                   help="treat the images as downscaled by this factor (teacher, renders and "
                   "Stage 2 alike): 1 for the authors' preprocessed ScanNet++ (already halved "
                   "to 876x584), 2 for raw ScanNet++ DSLR images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-points", type=int, default=None,
                   help="at most this many initial Gaussians from the scene's points "
                   "(default: all of them, as the authors)")
    p.add_argument("--feature-lr", type=float, default=LearningRates.features,
                   help="Adam lr of the per-Gaussian features (default: the authors' 6.25e-5)")
    p.add_argument("--decoder-lr", type=float, default=LearningRates.decoder,
                   help="Adam lr of the scene decoder (default: the authors' 6.25e-5)")
    p.add_argument("--holdout-every", type=int, default=0,
                   help="hold out every k-th view from training (0: use all)")
    p.add_argument("--hold-out-test-frames", action="store_true",
                   help="keep ScanNet++'s test_frames out of training (the authors train on "
                   "them; Stage 2 follows what Stage 1 recorded)")
    p.add_argument("--sh-degree", type=int, default=3)
    p.add_argument("--checkpoint-every", type=int, default=5000,
                   help="save a scene's whole training state every N steps (default 5000; 0: "
                   "never); a killed run continues each unfinished scene from its last one")
    p.add_argument("--cache-dir", help="Hugging Face cache for the backbone's weights")
    return p


def schedule_for(iterations: int) -> dict[str, int]:
    """3DGS's densification schedule, shrunk for runs shorter than its 30k steps.

    Refinement keeps at least 25 steps between rounds: it needs screen-space gradients
    averaged over many views, and refining after every step or two makes the Gaussian
    count explode.
    """
    frac = min(1.0, iterations / LiftConfig.iterations)
    every = max(25, round(100 * frac))
    start = max(every, round(500 * frac))
    return {"refine_every": every, "refine_start_iter": start,
            "refine_stop_iter": max(start + 1, round(15_000 * frac)),
            "reset_every": max(2 * every, round(3000 * frac)),
            "sh_degree_interval": max(1, round(1000 * frac))}


def config_from_args(args: argparse.Namespace) -> LiftConfig:
    return LiftConfig(
        iterations=args.iterations, feature_dim=args.feature_dim, sh_degree=args.sh_degree,
        downscale=args.downscale, max_points=args.max_points, seed=args.seed,
        lr=LearningRates(features=args.feature_lr, decoder=args.decoder_lr),
        holdout_every=args.holdout_every, hold_out_test_frames=args.hold_out_test_frames,
        **schedule_for(args.iterations),
    )


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.checkpoint_every < 0:
        parser.error(f"--checkpoint-every must be >= 0; got {args.checkpoint_every}")
    for name, value in (("--iterations", args.iterations), ("--feature-dim", args.feature_dim),
                        ("--max-points", args.max_points)):
        if value is not None and value < 1:
            parser.error(f"{name} must be a positive integer; got {value}")
    for name, value in (("--feature-lr", args.feature_lr), ("--decoder-lr", args.decoder_lr)):
        if not value > 0:
            parser.error(f"{name} must be a positive number; got {value}")
    if not args.downscale >= 1.0:
        parser.error(f"--downscale must be >= 1; got {args.downscale}")
    if not 0 <= args.sh_degree <= 3:
        parser.error(f"--sh-degree must be 0..3; got {args.sh_degree}")


def run_settings(backbone: str, backend: str) -> dict:
    """What a scene's checkpoint records beside its LiftConfig (a continued scene must match):
    the backbone (a local folder by absolute path) and the rasterizer."""
    local = Path(backbone)
    return {"backbone": str(local.resolve()) if local.is_dir() else backbone, "backend": backend}


def check_checkpoints(paths: list[Path], out_dir: Path, config: LiftConfig, settings: dict
                      ) -> None:
    """Refuse, before any work, to continue a scene saved with other settings."""
    for path in paths:
        ckpt = checkpoint_dir(output_path(out_dir, path.name))
        if has_checkpoint(ckpt) and not is_finished(output_path(out_dir, path.name)):
            check_settings(latest(ckpt), saved_settings(ckpt),
                           {**config.to_json(), **settings}, MAY_CHANGE)


def lift_one(path: Path, teacher, config: LiftConfig, backend: str, device: torch.device,
             out_dir: Path, backbone: str, position: int = 0, progress: bool = True,
             checkpoint_every: int = 0) -> dict:
    """Lift one scene and write its output, continuing from its checkpoint if there is one;
    returns the metrics."""
    scene = load_scene(path)
    images = load_views(scene, config.downscale)
    feats = compute_teacher_features(teacher, images.images, device=device)
    views = SceneViews.from_images(images, feats, device)
    target = output_path(out_dir, scene.name)
    ckpt = checkpoint_dir(target)
    bar = tqdm(total=config.iterations, desc=scene.name, position=position, leave=True,
               dynamic_ncols=True, mininterval=1.0, disable=not progress)

    def on_step(step: int, record: dict) -> None:
        bar.update(step + 1 - bar.n)
        bar.set_postfix(loss=f"{record['loss']:.4f}", psnr=f"{record['psnr']:.2f}",
                        gs=record["gaussians"], refresh=False)

    try:
        result = lift_scene(scene, views, config, backend=backend, device=device,
                            on_step=on_step, checkpoint=ckpt, checkpoint_every=checkpoint_every,
                            settings=run_settings(backbone, backend))
    finally:
        bar.close()
    meta = {
        "scene": scene.name, "scene_path": str(path.resolve()), "backbone": backbone,
        "feature_dim": config.feature_dim, "teacher_dim": int(feats.shape[1]),
        "patch_size": teacher.patch_size, "iterations": config.iterations, "backend": backend,
        "camera_convention": "opencv world-to-camera (gsplat viewmats)",
        "image_size": [views.width, views.height], "downscale": config.downscale,
        "sh_degree": config.sh_degree, "views": len(scene.frames),
        "training_views": scene_training_views(scene, config),
        "splits": [f.split for f in scene.frames],
        "metrics": result.metrics, "config": config.to_json(),
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
    }
    save_lifted(target, result.gaussians, meta)
    remove_checkpoint(ckpt)
    return result.metrics


def lift_scenes(scenes: str | Path, backbone: str, output: str | Path, config: LiftConfig, *,
                backend: str = "auto", cache_dir: str | None = None, progress: bool = True,
                checkpoint_every: int = 0, log: Callable[[str], None] = print) -> dict:
    """Lift every scene of ``scenes`` (this process's share under Accelerate) into
    ``output``; finished scenes are skipped, unfinished ones continue from their checkpoint
    (saved every ``checkpoint_every`` steps), failing ones are reported. Returns the summary.

    Raises ``SceneError``, ``FiT3DError`` or ``ValueError`` for bad input found before any
    work (the CLI's exit 2), :class:`~fit3d_hub.checkpoint.SettingsChangedError` when a
    scene's checkpoint was saved with other settings.
    """
    with accelerator_session() as accelerator:
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
    check_checkpoints(mine, out_dir, config, run_settings(backbone, backend))
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    try:
        summary = lift_scenes(args.scenes, args.backbone, args.output, config_from_args(args),
                              backend=args.backend, cache_dir=args.cache_dir,
                              checkpoint_every=args.checkpoint_every)
    except (FiT3DError, SceneError, ValueError) as err:
        print(f"training.lift: error: {err}", file=sys.stderr)
        return exit_status(err)
    print(json.dumps(summary))
    return 1 if summary["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
