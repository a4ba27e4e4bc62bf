"""The whole FiT3D pipeline on embedded synthetic scenes, offline, on CPU (``fit3d-hub demo``).

Synthetic scenes -> Stage 1 lifting -> Stage 2 fine-tuning -> ``load_fit3d`` -> pictures
and a table of multi-view consistency before and after, on views held out of both stages.
"""

from __future__ import annotations

import copy
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from eval.consistency import consistency
from fit3d_hub import FiT3D, get_transform, load_fit3d
from fit3d_hub.atomic import save_image_atomic
from fit3d_hub.backbone import create_vit
from fit3d_hub.pca import pca_rgb, side_by_side
from scenes.correspondence import correspondences
from scenes.holdout import training_views
from scenes.io import load_depth, load_rgb
from scenes.load import load_scene
from scenes.synthetic import generate
from training.finetune import run_finetune
from training.finetuning.data import find_lifted, load_lifted_scene
from training.finetuning.targets import render_target
from training.finetuning.trainer import FinetuneConfig
from training.lift import lift_scenes, schedule_for
from training.lifting.gaussians import SHORT_RUN_RATES
from training.lifting.trainer import LiftConfig

DEMO_BACKBONE = ("vit_small_patch8_224", {"embed_dim": 48, "depth": 2, "num_heads": 3,
                                          "img_size": 64})


@dataclass
class DemoSettings:
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


def demo_backbone(seed: int) -> FiT3D:
    """A tiny patch-8 ViT with random weights and no position embedding, so its features
    describe what a patch shows rather than where it sits in the frame."""
    torch.manual_seed(seed)
    arch, args = DEMO_BACKBONE
    vit = create_vit(arch, args)
    with torch.no_grad():
        vit.pos_embed.zero_()
    return FiT3D(vit, copy.deepcopy(vit), mode="original")


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
        for v, im in zip(views, rgb, strict=True):
            f = model.forward_features(transform(im).unsqueeze(0))
            rows.append(side_by_side([(f"view {v}", im), ("original", pca_rgb(f.original[0])),
                                      ("fine-tuned", pca_rgb(f.finetuned[0]))], 160))
            decoded, _ = render_target(lifted, v, "torch", torch.device("cpu"))
            rendered.append((f"rendered {v}", pca_rgb(decoded)))
    canvas = Image.new("RGB", (max(r.width for r in rows), sum(r.height for r in rows)), "white")
    y = 0
    for r in rows:
        canvas.paste(r, (0, y))
        y += r.height
    save_image_atomic(output / "pca.png", canvas)
    save_image_atomic(output / "rendered_features.png", side_by_side(rendered, 160))
    written += [output / "pca.png", output / "rendered_features.png"]
    return written


def run_demo(output: str | Path, settings: DemoSettings | None = None,
             log: Callable[[str], None] = print) -> dict:
    """Run every stage into ``output``; returns the consistency figures and stage times."""
    s = settings or DemoSettings()
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    times = s.timings
    t = time.perf_counter()
    scene_dirs = generate(output / "scenes", scenes=s.scenes, views=s.views, size=s.size,
                          seed=s.seed)
    backbone = s.backbone
    if backbone is None:
        backbone = str(output / "backbone")
        demo_backbone(s.seed).save_pretrained(backbone, include_base=True)
    times["data"] = time.perf_counter() - t
    log(f"[1/4] {len(scene_dirs)} synthetic scene(s), {s.views} views at {s.size} px "
        f"({times['data']:.1f} s)")

    t = time.perf_counter()
    lift_config = replace(
        LiftConfig(iterations=s.lift_iterations, max_points=s.points, seed=s.seed,
                   holdout_every=s.holdout_every, lr=SHORT_RUN_RATES),
        **schedule_for(s.lift_iterations))
    summary = lift_scenes(output / "scenes", backbone, output / "lifted", lift_config,
                          backend="torch", progress=False, log=lambda _: None)
    times["lift"] = time.perf_counter() - t
    if summary["failed"]:
        raise RuntimeError(f"Stage 1 failed for {', '.join(summary['failed'])}")
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


@dataclass
class EquivarianceDemoSettings:
    """The equivariance demo: train on some synthetic scenes, evaluate on others."""

    train_scenes: int = 2
    test_scenes: int = 2
    views: int = 12
    size: int = 64
    steps: int = 300
    lr: float = 1e-3
    """Short-run rate (the authors' 1e-5 moves a random tiny ViT too little in 300 steps)."""
    target_size: int = 64
    pairs: int = 20
    seed: int = 0
    backbone: str | None = None
    timings: dict[str, float] = field(default_factory=dict)


def run_equivariance_demo(output: str | Path, settings: EquivarianceDemoSettings | None = None,
                          log: Callable[[str], None] = print) -> dict:
    """Synthetic scenes -> equivariance fine-tuning -> ``load_fit3d`` -> APE / PCDP of
    nearest-neighbour matching on scenes the training never saw; returns the summary."""
    from eval.correspondence import markdown_table, run_scene_task, scene_tasks, summarise
    from training.equivariance.__main__ import run_equivariance
    from training.equivariance.trainer import EquivarianceConfig

    s = settings or EquivarianceDemoSettings()
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    times = s.timings
    t = time.perf_counter()
    train_dirs = generate(output / "scenes" / "train", scenes=s.train_scenes, views=s.views,
                          size=s.size, seed=s.seed)
    test_dirs = generate(output / "scenes" / "test", scenes=s.test_scenes, views=s.views,
                         size=s.size, seed=s.seed + 100)
    backbone = s.backbone
    if backbone is None:
        backbone = str(output / "backbone")
        demo_backbone(s.seed).save_pretrained(backbone, include_base=True)
    times["data"] = time.perf_counter() - t
    log(f"[1/3] {len(train_dirs)} training and {len(test_dirs)} test scene(s), {s.views} views "
        f"at {s.size} px ({times['data']:.1f} s)")

    t = time.perf_counter()
    # the architecture only (no weights read): LoRA goes on at most as many blocks as it has
    blocks = len(load_fit3d(backbone, mode="original", pretrained=False).original.blocks)
    config = EquivarianceConfig(steps=s.steps, lr=s.lr, lora_blocks=min(4, blocks),
                                target_size=s.target_size, save_every=0, seed=s.seed)
    run_equivariance(output / "scenes" / "train", backbone, output / "model", config,
                     progress=False, log=lambda _: None)
    times["finetune"] = time.perf_counter() - t
    log(f"[2/3] fine-tuned LoRA + refine conv on 3D correspondences, {s.steps} steps "
        f"({times['finetune']:.1f} s)")

    t = time.perf_counter()
    model = load_fit3d(output / "model")
    tasks = scene_tasks(test_dirs, s.pairs, 120.0, s.seed)
    results = [r for r in (run_scene_task(model, task, 1000, s.seed) for task in tasks)
               if r is not None]
    summary = summarise(results)
    times["evaluate"] = time.perf_counter() - t
    log(f"[3/3] loaded {output / 'model'} with load_fit3d, matched {summary['pairs']} view "
        f"pairs of unseen scenes ({times['evaluate']:.1f} s)")
    log("")
    log("3D correspondence on unseen scenes (APE: mean pixel error, % of the short side, "
        "lower is better; PCDP: % of points within the threshold, higher is better)")
    log(markdown_table(summary))
    log("time per stage: " + ", ".join(f"{k} {v:.1f} s" for k, v in times.items()))
    return {"correspondence": summary["overall"], "times": dict(times),
            "model": str(output / "model")}
