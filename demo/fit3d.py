"""The whole FiT3D pipeline on embedded synthetic scenes, offline, on CPU
(``fit3d-hub demo --method fit3d``, the default).

Synthetic scenes -> Stage 1 lifting -> Stage 2 fine-tuning -> ``load_fit3d`` -> pictures
and a table of multi-view consistency before and after, on views held out of both stages.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from demo.common import backbone_or_demo
from eval.consistency import consistency
from fit3d_hub import FiT3D, get_transform, load_fit3d
from fit3d_hub.atomic import save_image_atomic
from fit3d_hub.errors import TrainingStopped
from fit3d_hub.pca import pca_rgb_shared, side_by_side, stacked
from scenes.correspondence import correspondences
from scenes.holdout import training_views
from scenes.io import load_depth, load_rgb
from scenes.load import load_scene
from scenes.synthetic import generate
from training.fit3d.finetune.config import FinetuneConfig
from training.fit3d.finetune.data import find_lifted, load_lifted_scene
from training.fit3d.finetune.run import run_finetune
from training.fit3d.finetune.targets import render_target
from training.fit3d.lift.config import SHORT_RUN_RATES, LiftConfig
from training.fit3d.lift.run import lift_scenes


@dataclass
class Settings:
    """The FiT3D demo: one synthetic scene, every 4th view held out of both stages."""

    scenes: int = 1
    views: int = 16
    size: int = 64
    lift_iterations: int = 200
    points: int = 2000
    """Initial Gaussians (from at most this many scene points)."""
    epochs: int = 12
    lr: float = 1e-3
    holdout_every: int = 4
    seed: int = 0
    backbone: str | None = None
    """A registry name / repo / directory; None builds the tiny demo ViT (random weights)."""
    timings: dict[str, float] = field(default_factory=dict)


def quick(settings: Settings) -> Settings:
    """Fewer iterations (``--quick``: a smoke test)."""
    return replace(settings, lift_iterations=120, epochs=6)


def held_out_pairs(views: int, holdout_every: int) -> list[tuple[int, int]]:
    """Consecutive pairs of the views the held-out rule keeps out of both stages."""
    trained = set(training_views(["train"] * views, holdout_every))
    held = [v for v in range(views) if v not in trained]
    return list(itertools.pairwise(held)) or [(0, 1)]


@torch.no_grad()
def measure_consistency(model: FiT3D, scene_dir: Path, pairs: list[tuple[int, int]]
                        ) -> dict[str, float]:
    """Mean consistency ratio (matched / random cosine distance) per branch over view pairs."""
    scene = load_scene(scene_dir)
    transform = get_transform(model)
    out = {"original": [], "finetuned": []}
    for a, b in pairs:
        fa, fb = scene.frames[a], scene.frames[b]
        feats = [model.forward_features(transform(load_rgb(f.image_path)).unsqueeze(0))
                 for f in (fa, fb)]
        matches = correspondences(fa.camera, load_depth(fa.depth_path, fa.depth_scale),
                                  fb.camera, load_depth(fb.depth_path, fb.depth_scale))
        for branch in out:
            res = consistency(getattr(feats[0], branch)[0], getattr(feats[1], branch)[0],
                              matches, fa.camera.width, fa.camera.height)
            out[branch].append(res["ratio"])
    return {k: float(np.mean(v)) for k, v in out.items()}


def write_pictures(model: FiT3D, scene_dir: Path, lifted_dir: Path, views: list[int],
                   output: Path) -> list[Path]:
    """views.png, pca.png (original vs fine-tuned) and rendered_features.png."""
    scene = load_scene(scene_dir)
    transform = get_transform(model)
    record, = [r for r in find_lifted(lifted_dir) if r.name == scene.name]
    lifted = load_lifted_scene(record)
    rgb = [(load_rgb(scene.frames[v].image_path) * 255).astype(np.uint8) for v in views]
    written = []
    save_image_atomic(output / "views.png",
                      side_by_side([(f"view {v}", im) for v, im in zip(views, rgb, strict=True)],
                                   160))
    written.append(output / "views.png")
    rows, rendered = [], []
    with torch.no_grad():
        feats = [model.forward_features(transform(im).unsqueeze(0)) for im in rgb]
        # one PCA basis per branch across the views: equal colours mean equal features
        original = pca_rgb_shared([f.original[0] for f in feats])
        finetuned = pca_rgb_shared([f.finetuned[0] for f in feats])
        decoded = pca_rgb_shared([render_target(lifted, v, "torch", torch.device("cpu"))[0]
                                  for v in views])
        for i, (v, im) in enumerate(zip(views, rgb, strict=True)):
            rows.append(side_by_side([(f"view {v}", im), ("original", original[i]),
                                      ("fine-tuned", finetuned[i])], 160))
            rendered.append((f"rendered {v}", decoded[i]))
    save_image_atomic(output / "pca.png", stacked(rows))
    save_image_atomic(output / "rendered_features.png", side_by_side(rendered, 160))
    written += [output / "pca.png", output / "rendered_features.png"]
    return written


def run(output: str | Path, settings: Settings | None = None,
        log: Callable[[str], None] = print) -> dict:
    """Run every stage into ``output``; returns the consistency figures and stage times."""
    s = settings or Settings()
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    times = s.timings
    t = time.perf_counter()
    scene_dirs = generate(output / "scenes", scenes=s.scenes, views=s.views, size=s.size,
                          seed=s.seed)
    backbone = backbone_or_demo(s.backbone, output, s.seed)
    times["data"] = time.perf_counter() - t
    log(f"[1/4] {len(scene_dirs)} synthetic scene(s), {s.views} views at {s.size} px "
        f"({times['data']:.1f} s)")

    t = time.perf_counter()
    lift_config = LiftConfig(iterations=s.lift_iterations, max_points=s.points, seed=s.seed,
                             holdout_every=s.holdout_every, lr=SHORT_RUN_RATES).scheduled()
    summary = lift_scenes(output / "scenes", backbone, output / "lifted", lift_config,
                          backend="torch", progress=False, log=lambda _: None)
    times["lift"] = time.perf_counter() - t
    if summary["failed"]:
        raise TrainingStopped(f"Stage 1 failed for {', '.join(summary['failed'])}")
    log(f"[2/4] Stage 1: lifted features into 3D Gaussians ({times['lift']:.1f} s)")

    t = time.perf_counter()
    run_finetune(output / "lifted", backbone, output / "model",
                 FinetuneConfig(epochs=s.epochs, lr=s.lr, lr_drop=(), save_every=0,
                                seed=s.seed),
                 backend="torch", progress=False, log=lambda _: None)
    times["finetune"] = time.perf_counter() - t
    log(f"[3/4] Stage 2: fine-tuned the backbone on rendered features ({times['finetune']:.1f} s)")

    t = time.perf_counter()
    model = load_fit3d(output / "model")
    pairs = held_out_pairs(s.views, s.holdout_every)
    ratios = [measure_consistency(model, d, pairs) for d in scene_dirs]
    result = {k: float(np.mean([r[k] for r in ratios])) for k in ("original", "finetuned")}
    held = sorted({v for p in pairs for v in p})[:3]
    pictures = write_pictures(model, scene_dirs[0], output / "lifted", held, output)
    times["evaluate"] = time.perf_counter() - t
    log(f"[4/4] loaded {output / 'model'} with load_fit3d, evaluated held-out views "
        f"({times['evaluate']:.1f} s)")
    log("")
    log("multi-view consistency on held-out views (matched / random feature distance; "
        "lower is better)")
    log(f"  original backbone   : {result['original']:.3f}")
    log(f"  fine-tuned (FiT3D)  : {result['finetuned']:.3f}")
    log("time per stage: " + ", ".join(f"{k} {v:.1f} s" for k, v in times.items()))
    log("pictures: " + ", ".join(str(p) for p in pictures))
    return {"consistency": result, "times": dict(times), "pictures": [str(p) for p in pictures],
            "model": str(output / "model")}
