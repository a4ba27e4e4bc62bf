"""Feed-forward lifting end to end on synthetic scenes, offline, on CPU
(``fit3d-hub demo --method feedforward``).

Synthetic scenes -> a feed-forward lifter trained on all but one -> the held-out scene lifted
in one forward pass, beside Stage 1 given the same wall time and Stage 1 at the demo's
iteration count -> Stage 2 on the feed-forward targets -> multi-view consistency on views
held out of everything.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from demo.common import backbone_or_demo
from demo.fit3d import held_out_pairs, measure_consistency
from fit3d_hub import load_fit3d
from fit3d_hub.atomic import save_image_atomic
from fit3d_hub.pca import pca_rgb_shared, side_by_side
from scenes.holdout import training_views
from scenes.synthetic import generate
from training.fit3d.feedforward.config import FeedForwardConfig, FeedForwardRun, LiftRun
from training.fit3d.feedforward.run import lift_with_model, run_training
from training.fit3d.finetune.config import FinetuneConfig
from training.fit3d.finetune.data import find_lifted, load_lifted_scene
from training.fit3d.finetune.run import run_finetune
from training.fit3d.finetune.targets import render_target
from training.fit3d.lift.config import SHORT_RUN_RATES, LiftConfig
from training.fit3d.lift.record import output_path, read_meta
from training.fit3d.lift.run import lift_scenes
from training.fit3d.lifted_views import lifted_view_metrics


@dataclass
class Settings:
    """Five synthetic scenes: four train the lifter, the fifth is lifted and fine-tuned on;
    every 4th view of it is held out of everything."""

    scenes: int = 5
    views: int = 12
    size: int = 64
    steps: int = 250
    lift_iterations: int = 100
    epochs: int = 12
    holdout_every: int = 4
    seed: int = 0
    backbone: str | None = None
    timings: dict[str, float] = field(default_factory=dict)


def quick(settings: Settings) -> Settings:
    """Fewer steps (``--quick``: a smoke test)."""
    return replace(settings, steps=60, lift_iterations=40, epochs=4)


def _stage1(scene: Path, backbone: str, out: Path, iterations: int, s: Settings) -> float:
    """Stage 1 on one scene; returns its wall time."""
    config = LiftConfig(iterations=iterations, max_points=2000, seed=s.seed,
                        holdout_every=s.holdout_every, lr=SHORT_RUN_RATES).scheduled()
    start = time.perf_counter()
    summary = lift_scenes(scene, backbone, out, config, backend="torch", progress=False,
                          log=lambda _: None)
    if summary["failed"]:
        raise RuntimeError(f"Stage 1 failed on {scene}")
    return time.perf_counter() - start


def run(output: str | Path, settings: Settings | None = None,
        log: Callable[[str], None] = print) -> dict:
    """Run every step into ``output``; returns the table's figures and the stage times."""
    s = settings or Settings()
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    times = s.timings
    t = time.perf_counter()
    scene_dirs = generate(output / "scenes", scenes=s.scenes, views=s.views, size=s.size,
                          seed=s.seed)
    backbone = backbone_or_demo(s.backbone, output, s.seed)
    held_scene = scene_dirs[-1]
    times["data"] = time.perf_counter() - t
    log(f"[1/5] {len(scene_dirs)} synthetic scenes, {s.views} views at {s.size} px; "
        f"{held_scene.name} is held out of the lifter's training ({times['data']:.1f} s)")

    t = time.perf_counter()
    config = FeedForwardConfig(steps=s.steps, lr=2e-3, warmup_steps=20, feature_dim=16,
                               width=24, holdout_scenes=1, save_every=0, seed=s.seed)
    summary = run_training(FeedForwardRun(scenes=str(output / "scenes"), backbone=backbone,
                                          output=str(output / "lifter"), backend="torch"),
                           config, progress=False, log=lambda _: None)
    times["train lifter"] = time.perf_counter() - t
    log(f"[2/5] trained the feed-forward lifter on {s.scenes - 1} scenes, {s.steps} steps "
        f"({times['train lifter']:.1f} s; final loss {summary['final_loss']:.4f})")

    t = time.perf_counter()
    lift_with_model(LiftRun(model=str(output / "lifter"), scenes=str(held_scene),
                            output=str(output / "lifted_ff"), holdout_every=s.holdout_every,
                            backend="torch"), log=lambda _: None)
    ff_seconds = time.perf_counter() - t
    stage1_full = _stage1(held_scene, backbone, output / "lifted_s1", s.lift_iterations, s)
    # Stage 1 given the feed-forward lift's wall time: its fixed cost (backbone, views,
    # teacher features) and then as many iterations as its measured rate allows
    metrics = read_meta(output_path(output / "lifted_s1", held_scene.name)).metrics
    overhead = stage1_full - metrics["seconds"]
    equal = max(1, int((ff_seconds - overhead) * metrics["iterations_per_second"]))
    stage1_equal = _stage1(held_scene, backbone, output / "lifted_s1_equal", equal, s)
    times["lift"] = time.perf_counter() - t
    log(f"[3/5] lifted {held_scene.name}: feed-forward, Stage 1 for the same time, Stage 1 "
        f"for {s.lift_iterations} iterations ({times['lift']:.1f} s)")

    t = time.perf_counter()
    teacher = load_fit3d(backbone, mode="original")
    trained = set(training_views(["train"] * s.views, s.holdout_every))
    held_views = [v for v in range(s.views) if v not in trained]
    rows = {}
    for name, folder, seconds in (
            ("feed-forward (one pass)", "lifted_ff", ff_seconds),
            (f"Stage 1, same time ({equal} it)", "lifted_s1_equal", stage1_equal),
            (f"Stage 1, {s.lift_iterations} it", "lifted_s1", stage1_full)):
        m = lifted_view_metrics(output_path(output / folder, held_scene.name), teacher,
                                held_views)
        rows[name] = {"seconds": seconds, "psnr": m["psnr"], "relative_l1": m["relative_l1"]}
    times["measure"] = time.perf_counter() - t
    log(f"[4/5] measured the lifted scenes on {len(held_views)} held-out views "
        f"({times['measure']:.1f} s)")

    t = time.perf_counter()
    run_finetune(output / "lifted_ff", backbone, output / "model",
                 FinetuneConfig(epochs=s.epochs, lr=1e-3, lr_drop=(), save_every=0,
                                seed=s.seed),
                 backend="torch", progress=False, log=lambda _: None)
    model = load_fit3d(output / "model")
    consistency = measure_consistency(model, held_scene,
                                      held_out_pairs(s.views, s.holdout_every))
    picture = _picture(output, held_scene.name, held_views[:3])
    times["finetune"] = time.perf_counter() - t
    log(f"[5/5] Stage 2 on the feed-forward targets, loaded {output / 'model'} "
        f"({times['finetune']:.1f} s)")
    log("")
    log(f"lifting {held_scene.name} (never seen by the lifter), measured on its "
        f"{len(held_views)} held-out views:")
    log(table(rows))
    log("")
    log("multi-view consistency on held-out views after Stage 2 on the feed-forward targets "
        "(matched / random feature distance; lower is better)")
    log(f"  original backbone   : {consistency['original']:.3f}")
    log(f"  fine-tuned          : {consistency['finetuned']:.3f}")
    log("time per step: " + ", ".join(f"{k} {v:.1f} s" for k, v in times.items()))
    log(f"picture: {picture}")
    return {"lifting": rows, "consistency": consistency, "times": dict(times),
            "held_out": summary.get("held_out", {}), "picture": str(picture)}


def table(rows: dict[str, dict[str, float]]) -> str:
    lines = ["| lifter | lift time (s) | RGB PSNR (dB) | feature L1 / constant |",
             "|---|---|---|---|"]
    lines += [f"| {name} | {r['seconds']:.2f} | {r['psnr']:.2f} | {r['relative_l1']:.3f} |"
              for name, r in rows.items()]
    return "\n".join(lines)


def _picture(output: Path, scene: str, views: list[int]) -> Path:
    """rendered_features.png: each lifter's decoded features at held-out views (one PCA
    basis per view across the lifters, so equal colours mean equal features)."""
    panels = []
    for v in views:
        maps = []
        for folder in ("lifted_ff", "lifted_s1_equal", "lifted_s1"):
            record, = [r for r in find_lifted(output / folder) if r.name == scene]
            decoded, _ = render_target(load_lifted_scene(record), v, "torch",
                                       torch.device("cpu"))
            maps.append(decoded)
        pictures = pca_rgb_shared(maps)  # one basis for the three lifters' maps of the view
        for name, picture in zip(("feed-forward", "Stage 1 same time", "Stage 1"), pictures,
                                 strict=True):
            panels.append((f"{name}, view {v}", picture))
    path = output / "rendered_features.png"
    save_image_atomic(path, side_by_side(panels, 120))
    return path
