"""The equivariance method end to end on synthetic scenes, offline, on CPU
(``fit3d-hub demo --method equivariance``).

Training scenes -> LoRA + refine-conv fine-tuning on 3D correspondences -> ``load_fit3d`` ->
APE / PCDP of nearest-neighbour matching on scenes the training never saw.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from demo.common import backbone_or_demo
from eval.correspondence import markdown_table, run_scene_task, scene_tasks, summarise
from fit3d_hub import load_fit3d
from scenes.synthetic import generate
from training.equivariance.config import EquivarianceConfig
from training.equivariance.run import run_equivariance


@dataclass
class Settings:
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


def quick(settings: Settings) -> Settings:
    """Fewer steps (``--quick``: a smoke test)."""
    return replace(settings, steps=100)


def run(output: str | Path, settings: Settings | None = None,
        log: Callable[[str], None] = print) -> dict:
    """Synthetic scenes -> equivariance fine-tuning -> ``load_fit3d`` -> APE / PCDP of
    nearest-neighbour matching on scenes the training never saw; returns the summary."""
    s = settings or Settings()
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    times = s.timings
    t = time.perf_counter()
    train_dirs = generate(output / "scenes" / "train", scenes=s.train_scenes, views=s.views,
                          size=s.size, seed=s.seed)
    test_dirs = generate(output / "scenes" / "test", scenes=s.test_scenes, views=s.views,
                         size=s.size, seed=s.seed + 100)
    backbone = backbone_or_demo(s.backbone, output, s.seed)
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
