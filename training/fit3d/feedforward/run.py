"""The feed-forward lifter as library calls: train it across scenes (:func:`run_training`),
read a trained one (:func:`load_lifter`), and lift scenes with it into Stage 1's lifted-file
format (:func:`lift_with_model`), which Stage 2 and every other consumer read unchanged."""

from __future__ import annotations

import json
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from fit3d_hub import FiT3D, load_fit3d
from fit3d_hub.backbone import state_bytes, state_shapes
from fit3d_hub.budget import check_bytes
from fit3d_hub.errors import FiT3DError, OutputWriteError
from fit3d_hub.loading import model_id
from fit3d_hub.render.backends import resolve_backend
from fit3d_hub.weights import (
    check_shapes,
    load_strict,
    read_header,
    read_state_dict,
    save_state_dict,
)
from scenes.load import scene_paths
from scenes.types import SceneError
from training.common.export import owned_run, run_settings, write_summary
from training.common.loop import CHECKPOINTS, progress_bar
from training.fit3d.feedforward.config import FeedForwardConfig, FeedForwardRun, LiftRun
from training.fit3d.feedforward.data import (
    PooledScene,
    check_enough_views,
    load_pooled_scene,
    nearest_partners,
)
from training.fit3d.feedforward.model import FeedForwardLifter, LifterShape, PixelGaussians
from training.fit3d.feedforward.trainer import LifterTraining, render, train
from training.fit3d.lift.config import LiftConfig
from training.fit3d.lift.gaussians import FeatureGaussians
from training.fit3d.lift.losses import psnr
from training.fit3d.lift.record import LiftedMeta, output_path, save_lifted
from training.fit3d.lift.teacher import upsample_teacher

LIFTER_FILE = "lifter.safetensors"
META_KEY = "fit3d_feedforward"
FORMAT_VERSION = 1
LIFTER_NAME = "feedforward"
"""The ``lifter`` a lifted file made here records (Stage 1 writes ``stage1``)."""


class LifterFileError(FiT3DError, ValueError):
    """A lifter folder that is missing, unreadable or does not fit the teacher."""


COMMAND = "training.fit3d.feedforward"


def lifter_shape(config: FeedForwardConfig, teacher_dim: int) -> LifterShape:
    return LifterShape(teacher_dim=teacher_dim, feature_dim=config.feature_dim,
                       width=config.width, stride=config.stride, depth=config.depth,
                       depth_candidates=config.depth_candidates, near=config.near,
                       far=config.far)


def build_lifter(shape: LifterShape, seed: int) -> FeedForwardLifter:
    torch.manual_seed(seed)
    return FeedForwardLifter(shape)


def save_lifter(output: Path, lifter: FeedForwardLifter, record: dict[str, Any]) -> Path:
    """``output/lifter.safetensors``: the weights, and the shape and provenance as metadata."""
    meta = {"format_version": FORMAT_VERSION, "shape": asdict(lifter.shape), **record}
    return save_state_dict({k: v.detach().float().contiguous()
                            for k, v in lifter.state_dict().items()},
                           Path(output) / LIFTER_FILE, metadata={META_KEY: json.dumps(meta)})


def load_lifter(folder: str | Path, device: torch.device | str = "cpu"
                ) -> tuple[FeedForwardLifter, dict[str, Any]]:
    """The lifter in ``folder`` and its record; a missing, foreign or mismatched file is one
    line naming it."""
    path = Path(folder) / LIFTER_FILE
    try:
        with safe_open(str(path), framework="pt") as fh:
            raw = (fh.metadata() or {}).get(META_KEY)
    except FileNotFoundError:
        raise LifterFileError(f"{path}: missing (train a lifter with python -m "
                              "training.fit3d.feedforward)") from None
    except (SafetensorError, OSError) as err:
        raise LifterFileError(f"{path}: not a readable safetensors file ({err})") from None
    try:
        meta = json.loads(raw) if raw is not None else None
    except json.JSONDecodeError as err:
        raise LifterFileError(f"{path}: '{META_KEY}' metadata is not JSON ({err})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("shape"), dict):
        raise LifterFileError(f"{path}: no '{META_KEY}' metadata with a 'shape'; not written "
                              "by training.fit3d.feedforward")
    if meta.get("format_version") != FORMAT_VERSION:
        raise LifterFileError(f"{path}: lifter format {meta.get('format_version')!r}; this "
                              f"fit3d-hub reads format {FORMAT_VERSION}")
    try:
        shape = LifterShape(**meta["shape"])
        for f in fields(shape):  # the metadata's sizes are numbers of the declared kind
            value, kind = getattr(shape, f.name), type(getattr(LifterShape(1), f.name))
            if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float
                                                         else kind):
                raise TypeError(f"{f.name}={value!r}")
        with torch.device("meta"):  # sized and shaped before anything is allocated
            skeleton = FeedForwardLifter(shape)
    except (TypeError, ValueError, RuntimeError, AssertionError) as err:
        raise LifterFileError(f"{path}: bad 'shape' metadata ({err})") from None
    check_bytes(state_bytes(skeleton), f"{path}: 'shape' metadata", "this lifter")
    check_shapes(state_shapes(skeleton), read_header(path)[0], str(path))
    lifter = FeedForwardLifter(shape)
    load_strict(lifter, read_state_dict(path), str(path))
    return lifter.to(device).eval(), meta


def load_pool(paths: list[Path], teacher: FiT3D, config: FeedForwardConfig, device) \
        -> list[PooledScene]:
    return [load_pooled_scene(p, teacher, downscale=config.downscale,
                              holdout_every=config.holdout_every,
                              needs_depth=config.depth == "sensor", device=device)
            for p in paths]


def split_scenes(paths: list[Path], holdout: int) -> tuple[list[Path], list[Path]]:
    """(training scenes, held-out scenes): the last ``holdout`` of the sorted paths."""
    paths = sorted(paths)
    if holdout >= len(paths):
        raise SceneError(f"--holdout-scenes {holdout} leaves no scene to train on (there are "
                         f"{len(paths)})")
    return paths[:len(paths) - holdout], paths[len(paths) - holdout:]


def run_training(run: FeedForwardRun, config: FeedForwardConfig, *, progress: bool = True,
                 log: Callable[[str], None] = print) -> dict:
    """Train a lifter on ``run.scenes`` and write it to ``run.output``; returns the summary
    (with held-out scenes' figures when ``config.holdout_scenes``)."""
    return owned_run(
        run.output, lambda accelerator: _train(accelerator, run, config, progress, log),
        command=COMMAND, settings={"run": run_settings(run), "config": config.to_json()},
        resume=run.resume, overwrite=run.overwrite, log=log,
        mixed_precision=run.mixed_precision, gradient_accumulation_steps=config.grad_accum)


def _train(accelerator, run, config, progress: bool, log: Callable[[str], None]) -> dict:
    """The run's work, in the session that owns its output."""
    backend = resolve_backend(run.backend)
    train_paths, held_paths = split_scenes(scene_paths(run.scenes), config.holdout_scenes)
    teacher = load_fit3d(run.backbone, mode="original", device=accelerator.device,
                         cache_dir=run.cache_dir)
    scenes = load_pool(train_paths, teacher, config, accelerator.device)
    for scene in scenes:
        check_enough_views(scene, config.context_views, config.target_views)
    teacher_dim = int(scenes[0].teacher.shape[1])
    lifter = build_lifter(lifter_shape(config, teacher_dim), config.seed)
    model = LifterTraining(lifter, backend, config.ssim_weight)
    output = Path(run.output)
    if accelerator.is_main_process:
        log(f"{len(scenes)} training scene(s), {len(held_paths)} held out; "
            f"{config.depth} depth, {config.context_views} context + "
            f"{config.target_views} target views, {config.steps} steps")
    bar = progress_bar("feed-forward lifter", config.steps,
                       progress and accelerator.is_local_main_process)

    def on_step(record: dict) -> None:
        bar.update(record["step"] - bar.n)
        bar.set_postfix(loss=f"{record['loss']:.4f}", psnr=f"{record['psnr']:.2f}",
                        refresh=False)

    try:
        summary = train(accelerator, model, scenes, config,
                        checkpoint_dir=output / CHECKPOINTS, resume=run.resume,
                        settings={"scenes": [s.name for s in scenes],
                                  "backbone": model_id(run.backbone), "backend": backend,
                                  "mixed_precision": run.mixed_precision},
                        on_step=on_step)
    finally:
        bar.close()
    trained = accelerator.unwrap_model(model).lifter.eval()
    held = {}
    if held_paths:
        with torch.no_grad():
            for scene in load_pool(held_paths, teacher, config, accelerator.device):
                held[scene.name] = evaluate_views(trained, scene, backend,
                                                  config.context_views)
    summary["held_out"] = held
    if accelerator.is_main_process:
        record = {"backbone": run.backbone, "patch_size": teacher.patch_size,
                  "downscale": config.downscale, "scenes": [s.name for s in scenes],
                  "held_out_scenes": [p.name for p in held_paths], "steps": summary["steps"],
                  "config": config.to_json(),
                  "versions": {"torch": torch.__version__}}
        save_lifter(output, trained, record)
        write_summary(output / "training_summary.json",
                      {**summary, "config": config.to_json()})
        log(f"wrote {output / LIFTER_FILE} ({summary['steps']} steps, final loss "
            f"{summary['final_loss']:.4f}); lift scenes with python -m "
            f"training.fit3d.feedforward.lift --model {output} --scenes DIR --output DIR")
    return summary


def context_views_of(scene: PooledScene, max_context: int) -> list[int]:
    """Up to ``max_context`` of the scene's trainable views, evenly spaced."""
    pool = scene.trainable
    if len(pool) <= max_context:
        return list(pool)
    picks = np.linspace(0, len(pool) - 1, max_context).round().astype(int)
    return [pool[i] for i in sorted(set(picks.tolist()))]


def lift_gaussians(lifter: FeedForwardLifter, scene: PooledScene, context: list[int],
                   partners_per_view: int, device: torch.device | str = "cpu"
                   ) -> PixelGaussians:
    """The scene's Gaussians from ``context`` (each view's cost volume over its nearest
    ``partners_per_view`` context views when depth is predicted)."""
    needed = 2 if lifter.shape.depth == "predicted" else 1
    if len(context) < needed:
        raise SceneError(f"{scene.path}: {len(context)} context view(s); this lifter "
                         f"({lifter.shape.depth} depth) needs at least {needed}")
    partners = nearest_partners(scene.centres[context], max(1, partners_per_view))
    return lifter(scene.context(context, device), partners)


@torch.no_grad()
def evaluate_views(lifter: FeedForwardLifter, scene: PooledScene, backend: str,
                   context_count: int, views: list[int] | None = None,
                   context: list[int] | None = None) -> dict[str, float]:
    """Mean RGB PSNR and decoded-feature L1 at ``views`` (default: the views not among the
    context) from ``context`` (default: ``context_count`` trainable views evenly spaced),
    with the L1 of a constant feature beside it (the teacher's mean over the context views)."""
    context = context if context is not None else context_views_of(scene, context_count)
    views = views if views is not None else [v for v in range(len(scene.images))
                                             if v not in context]
    device = next(lifter.parameters()).device
    gaussians = lift_gaussians(lifter, scene, context, context_count - 1, device)
    width, height = scene.size
    mean = scene.teacher[context].float().mean((0, 2, 3))[None, :, None, None].to(device)
    psnrs, l1s, const = [], [], []
    for v in views:
        at = scene.context([v], device)
        out = render(gaussians, lifter.decoder, at.viewmats, at.Ks, width, height, backend)
        target = upsample_teacher(at.teacher, height, width)
        psnrs.append(psnr(out["rgb"].clamp(0, 1), at.images))
        l1s.append(float((out["decoded"] - target).abs().mean()))
        const.append(float((target - mean).abs().mean()))
    return {"psnr": float(np.mean(psnrs)), "feature_l1": float(np.mean(l1s)),
            "constant_feature_l1": float(np.mean(const)), "views": len(views),
            "context": len(context)}


def to_feature_gaussians(gaussians: PixelGaussians, lifter: FeedForwardLifter
                         ) -> FeatureGaussians:
    """Stage 1's parameterisation (log scales, logit opacities, SH) of lifted Gaussians, with
    the lifter's decoder as the scene decoder."""
    eps = 1e-6
    opacity = gaussians.opacities.clamp(eps, 1 - eps)
    params = {"means": gaussians.means, "quats": gaussians.quats,
              "scales": gaussians.scales.clamp_min(1e-8).log(),
              "opacities": torch.log(opacity / (1 - opacity)), "sh0": gaussians.colors,
              "shN": gaussians.colors.new_zeros(len(gaussians.means), 0, 3),
              "features": gaussians.features}
    out = FeatureGaussians({k: v.detach().float().cpu() for k, v in params.items()},
                           lifter.shape.teacher_dim)
    with torch.no_grad():
        out.decoder.weight.copy_(lifter.decoder.weight.detach().cpu())
    return out


def check_teacher(lifter: FeedForwardLifter, teacher: FiT3D, model_dir: Path,
                  backbone: str) -> None:
    width = teacher.embed_dim
    if int(width) != lifter.shape.teacher_dim:
        raise LifterFileError(f"{Path(model_dir) / LIFTER_FILE}: trained for a teacher of width "
                              f"{lifter.shape.teacher_dim}; {backbone} has width {width}")


def lift_with_model(run: LiftRun, *, log: Callable[[str], None] = print) -> dict:
    """Lift every scene of ``run.scenes`` with the lifter in ``run.model`` into
    ``run.output`` (Stage 1's format; the record says ``lifter: feedforward``). Scenes that
    fail are reported and the others go on; bad input found before any work is one line."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    lifter, meta = load_lifter(run.model, device)
    backbone = run.backbone or meta.get("backbone")
    if not backbone:
        raise LifterFileError(f"{Path(run.model) / LIFTER_FILE}: records no backbone; pass "
                              "--backbone")
    backend = resolve_backend(run.backend)
    paths = scene_paths(run.scenes)
    teacher = load_fit3d(backbone, mode="original", device=device, cache_dir=run.cache_dir)
    check_teacher(lifter, teacher, Path(run.model), backbone)
    downscale = float(meta.get("downscale", 1.0))
    context_count = int(meta.get("config", {}).get("context_views", 2))
    done, failures = 0, []
    for path in paths:
        start = time.perf_counter()
        try:
            scene = load_pooled_scene(path, teacher, downscale=downscale,
                                      holdout_every=run.holdout_every,
                                      needs_depth=lifter.shape.depth == "sensor", device=device)
            context = context_views_of(scene, run.max_context)
            with torch.no_grad():
                gaussians = lift_gaussians(lifter, scene, context, context_count - 1, device)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            with torch.no_grad():
                metrics = evaluate_views(lifter, scene, backend, context_count,
                                         views=list(range(len(scene.images))), context=context)
        except OutputWriteError:
            raise
        except (SceneError, FiT3DError, ValueError) as err:
            failures.append(path.name)
            print(f"{path.name}: FAILED: {err}", file=sys.stderr)
            continue
        metrics.update(seconds=seconds, gaussians=len(gaussians.means))
        lifted = to_feature_gaussians(gaussians, lifter)
        record = LiftedMeta(
            scene=scene.name, scene_path=str(Path(path).resolve()), backbone=backbone,
            feature_dim=lifter.shape.feature_dim, teacher_dim=lifter.shape.teacher_dim,
            patch_size=teacher.patch_size, backend=backend, image_size=scene.size,
            downscale=downscale, sh_degree=0, views=len(scene.images),
            training_views=scene.trainable, splits=scene.splits, metrics=metrics,
            config={**LiftConfig(sh_degree=0, holdout_every=run.holdout_every).to_json(),
                    "feedforward": meta.get("config", {})},
            lifter=LIFTER_NAME, lifter_model=str(Path(run.model).resolve()),
            versions={"torch": torch.__version__, "python": platform.python_version()})
        target = save_lifted(output_path(run.output, scene.name), lifted, record)
        done += 1
        log(f"{scene.name}: {len(context)} context views -> {metrics['gaussians']} Gaussians "
            f"in {seconds:.2f} s; psnr {metrics['psnr']:.2f} dB, feature L1 "
            f"{metrics['feature_l1']:.4f} -> {target}")
    return {"lifted": done, "failed": failures}
