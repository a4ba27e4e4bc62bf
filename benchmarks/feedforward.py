"""Feed-forward lifting vs Stage 1, side by side in one run, on synthetic scenes the lifter
never trained on.

A lifter is trained on ``--train-scenes`` scenes; each of ``--test-scenes`` other scenes is
then lifted three ways: the lifter's one forward pass, Stage 1 given the same wall time, and
Stage 1 for ``--stage1-iterations`` (default: its default, 30,000; the time of 30,000 is also
printed, extrapolated from the measured rate, when fewer are run). Every fourth view of a test
scene is held out of all lifting. Printed per lifter: wall time per scene, RGB PSNR and
decoded-feature L1 relative to a constant feature on the held-out views (as
``benchmarks/lift_settings.py``), then the multi-view consistency on held-out views of a
backbone fine-tuned by Stage 2 from that lifter's targets. With CUDA, every step runs there
(Stage 1 and the renders on gsplat); the rows say which device.

    python benchmarks/feedforward.py [--stage1-iterations 30000] [--steps 600]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from demo.common import backbone_or_demo  # noqa: E402
from demo.fit3d import held_out_pairs, measure_consistency  # noqa: E402
from fit3d_hub import load_fit3d  # noqa: E402
from scenes.holdout import training_views  # noqa: E402
from scenes.synthetic import generate  # noqa: E402
from training.fit3d.feedforward.config import (  # noqa: E402
    FeedForwardConfig,
    FeedForwardRun,
    LiftRun,
)
from training.fit3d.feedforward.run import lift_with_model, run_training  # noqa: E402
from training.fit3d.finetune.config import FinetuneConfig  # noqa: E402
from training.fit3d.finetune.run import run_finetune  # noqa: E402
from training.fit3d.lift.config import SHORT_RUN_RATES, LiftConfig  # noqa: E402
from training.fit3d.lift.record import output_path, read_meta  # noqa: E402
from training.fit3d.lift.run import lift_scenes  # noqa: E402
from training.fit3d.lifted_views import lifted_view_metrics  # noqa: E402

HOLDOUT_EVERY = 4
DEFAULT_ITERATIONS = LiftConfig.iterations


def stage1(scene: Path, backbone: str, out: Path, iterations: int, seed: int) -> float:
    """Stage 1 on one scene (the authors' rates at 30,000 iterations, the short-run rates
    below); returns the wall time."""
    rates = {} if iterations >= DEFAULT_ITERATIONS else {"lr": SHORT_RUN_RATES}
    config = LiftConfig(iterations=iterations, seed=seed, holdout_every=HOLDOUT_EVERY,
                        **rates).scheduled()
    start = time.perf_counter()
    summary = lift_scenes(scene, backbone, out, config, progress=False, log=lambda _: None)
    if summary["failed"]:
        raise RuntimeError(f"Stage 1 failed on {scene}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-scenes", type=int, default=6)
    parser.add_argument("--test-scenes", type=int, default=2)
    parser.add_argument("--views", type=int, default=12)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=600, help="lifter training steps")
    parser.add_argument("--stage1-iterations", type=int, default=DEFAULT_ITERATIONS)
    parser.add_argument("--epochs", type=int, default=12, help="Stage 2 epochs")
    parser.add_argument("--depth", default="sensor", choices=("sensor", "predicted"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        train = generate(root / "train", scenes=args.train_scenes, views=args.views,
                         size=args.size, seed=args.seed)
        test = generate(root / "test", scenes=args.test_scenes, views=args.views,
                        size=args.size, seed=args.seed + 1000)
        backbone = backbone_or_demo(None, root, args.seed)
        start = time.perf_counter()
        config = FeedForwardConfig(steps=args.steps, lr=2e-3, warmup_steps=20, feature_dim=16,
                                   width=24, save_every=0, depth=args.depth, seed=args.seed)
        run_training(FeedForwardRun(scenes=str(root / "train"), backbone=backbone,
                                    output=str(root / "lifter")), config, progress=False,
                     log=lambda _: None)
        train_seconds = time.perf_counter() - start
        print(f"device {device}; lifter ({args.depth} depth) trained on {len(train)} scenes, "
              f"{args.steps} steps in {train_seconds:.1f} s (paid once, not per scene); "
              f"{len(test)} test scenes of {args.views} views at {args.size} px, every "
              f"{HOLDOUT_EVERY}th view held out")
        rows: dict[str, dict[str, list[float]]] = {}

        def add(name: str, seconds: float, folder: str, scene: Path) -> None:
            views = [v for v in range(args.views)
                     if v not in training_views(["train"] * args.views, HOLDOUT_EVERY)]
            m = lifted_view_metrics(output_path(root / folder, scene.name), teacher, views)
            row = rows.setdefault(name, {"seconds": [], "psnr": [], "relative_l1": []})
            for key, value in (("seconds", seconds), ("psnr", m["psnr"]),
                               ("relative_l1", m["relative_l1"])):
                row[key].append(value)

        teacher = load_fit3d(backbone, mode="original")
        rates = []
        for scene in test:
            t = time.perf_counter()
            lift_with_model(LiftRun(model=str(root / "lifter"), scenes=str(scene),
                                    output=str(root / "ff"), holdout_every=HOLDOUT_EVERY),
                            log=lambda _: None)
            ff = time.perf_counter() - t
            full = stage1(scene, backbone, root / "s1", args.stage1_iterations, args.seed)
            metrics = read_meta(output_path(root / "s1", scene.name)).metrics
            rates.append(metrics["iterations_per_second"])
            overhead = full - metrics["seconds"]
            equal = max(1, int((ff - overhead) * metrics["iterations_per_second"]))
            same = stage1(scene, backbone, root / "s1_equal", equal, args.seed)
            add("feed-forward", ff, "ff", scene)
            add("Stage 1, same wall time", same, "s1_equal", scene)
            add(f"Stage 1, {args.stage1_iterations} it", full, "s1", scene)
        print("\n| lifter | wall time per scene (s) | held-out RGB PSNR (dB) | held-out feature "
              "L1 / constant |\n|---|---|---|---|")
        for name, row in rows.items():
            print(f"| {name} | {np.mean(row['seconds']):.2f} | {np.mean(row['psnr']):.2f} | "
                  f"{np.mean(row['relative_l1']):.3f} |")
        if args.stage1_iterations < DEFAULT_ITERATIONS:
            print(f"| Stage 1, {DEFAULT_ITERATIONS} it (time extrapolated from "
                  f"{np.mean(rates):.1f} it/s) | {DEFAULT_ITERATIONS / np.mean(rates):.0f} | - "
                  "| - |")
        ff_time = np.mean(rows["feed-forward"]["seconds"])
        print(f"\nfeed-forward lift vs Stage 1 at {DEFAULT_ITERATIONS} iterations: "
              f"{DEFAULT_ITERATIONS / np.mean(rates) / ff_time:.0f}x less wall time per scene")
        print("\n| Stage 2 from | consistency, original | consistency, fine-tuned |\n"
              "|---|---|---|")
        pairs = held_out_pairs(args.views, HOLDOUT_EVERY)
        for name, folder in (("feed-forward targets", "ff"),
                             ("Stage 1 same-time targets", "s1_equal"),
                             (f"Stage 1 {args.stage1_iterations}-it targets", "s1")):
            out = root / f"model_{folder}"
            run_finetune(root / folder, backbone, out,
                         FinetuneConfig(epochs=args.epochs, lr=1e-3, lr_drop=(), save_every=0,
                                        seed=args.seed), progress=False, log=lambda _: None)
            model = load_fit3d(out)
            ratios = [measure_consistency(model, scene, pairs) for scene in test]
            print(f"| {name} | {np.mean([r['original'] for r in ratios]):.3f} | "
                  f"{np.mean([r['finetuned'] for r in ratios]):.3f} |")
        print("(consistency: matched / random feature distance on held-out view pairs; lower "
              "is better)")


if __name__ == "__main__":
    main()
