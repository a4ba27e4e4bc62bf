"""Stage 1 feature settings at equal iterations: the authors' rates vs. short-run rates.

The authors optimise the per-Gaussian features and the scene decoder with Adam at 6.25e-5
(3DGS's colour rate / 40) for 30,000 iterations. The demo and the tests lift for a few
hundred. This script lifts the same synthetic scenes with both sets of rates (everything
else the authors': zero-initialised features, masks, losses, densification) for the same
number of iterations and reports, on views held out of the lift, how far the decoded
rendered features are from the teacher's, relative to the best constant feature (the
training views' mean): below 1.0 the 3D field explains unseen views better than a constant.

    python benchmarks/lift_settings.py [--iterations 300,1000] [--scenes 2] [--size 64]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from demo.common import demo_backbone  # noqa: E402
from scenes.load import load_scene  # noqa: E402
from scenes.synthetic import generate  # noqa: E402
from scenes.views import load_views  # noqa: E402
from training.fit3d.lift.config import SHORT_RUN_RATES, LearningRates, LiftConfig, schedule_for  # noqa: E402
from training.fit3d.lift.teacher import compute_teacher_features, upsample_teacher  # noqa: E402
from training.fit3d.lift.trainer import SceneViews, lift_scene, render_views  # noqa: E402

HOLDOUT_EVERY = 4
SETTINGS = {"authors (6.25e-5 / 6.25e-5)": LearningRates(),
            "short-run (2.5e-3 / 1e-3)": SHORT_RUN_RATES}


def held_out_ratio(result, views: SceneViews, config: LiftConfig, count: int) -> float:
    """Mean over held-out views of L1(decoded, teacher) / L1(training mean, teacher)."""
    train = [i for i in range(count) if i % HOLDOUT_EVERY != 0]
    mean = views.teacher[train].float().mean(dim=(0, 2, 3)).view(1, -1, 1, 1)
    ratios = []
    for i in range(0, count, HOLDOUT_EVERY):
        with torch.no_grad():
            out = render_views(result.gaussians, views, i, "torch", config.sh_degree)
        target = upsample_teacher(views.teacher[i:i + 1], views.height, views.width)
        ratios.append(float((out["decoded"] - target).abs().mean()
                            / (mean - target).abs().mean()))
    return float(np.mean(ratios))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", default="300,1000")
    parser.add_argument("--scenes", type=int, default=2)
    parser.add_argument("--views", type=int, default=16)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    teacher = demo_backbone(0)
    cpu = torch.device("cpu")
    print(f"{args.scenes} synthetic scene(s), {args.views} views at {args.size} px, every "
          f"{HOLDOUT_EVERY}th view held out; teacher: the demo's tiny ViT; torch rasterizer")
    print("| iterations | rates (features / decoder) | held-out feature L1 vs. constant "
          "| feature L1, all views | PSNR, all views |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        dirs = generate(Path(tmp), scenes=args.scenes, views=args.views, size=args.size)
        scenes = [load_scene(d) for d in dirs]
        views = []
        for scene in scenes:
            images = load_views(scene)
            views.append(SceneViews.from_images(
                images, compute_teacher_features(teacher, images.images), cpu))
        for iterations in (int(v) for v in args.iterations.split(",")):
            for label, rates in SETTINGS.items():
                config = LiftConfig(iterations=iterations, max_points=2000, lr=rates,
                                    holdout_every=HOLDOUT_EVERY, **schedule_for(iterations))
                rows = []
                for scene, v in zip(scenes, views, strict=True):
                    result = lift_scene(scene, v, config, backend="torch", device=cpu)
                    rows.append((held_out_ratio(result, v, config, len(scene.frames)),
                                 result.metrics["feature_l1"], result.metrics["psnr"]))
                ratio, l1, psnr = (float(np.mean(c)) for c in zip(*rows, strict=True))
                print(f"| {iterations} | {label} | {ratio:.3f} | {l1:.4f} | {psnr:.2f} |",
                      flush=True)


if __name__ == "__main__":
    main()
