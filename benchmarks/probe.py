"""Linear-probe training with cached features vs. recomputing the backbone every step.

One run, same model, data and iterations: the ratio of the two training times is printed
(goal >= 10x), with the cache's one-time extraction counted separately and in the total.

    python benchmarks/probe.py [--backbone dinov2_small] [--iterations 40] [--size 224]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from eval.datasets import open_dataset  # noqa: E402
from eval.linear_probe import train_probe  # noqa: E402
from eval.protocols import quick_depth, quick_seg  # noqa: E402
from fit3d_hub import load_fit3d  # noqa: E402
from scenes.synthetic import generate  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="dinov2_small")
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--task", default="seg", choices=("seg", "depth"))
    args = parser.parse_args()
    model = load_fit3d(args.backbone, pretrained=False)  # weights do not change the timing
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp) / "scenes", scenes=2, views=8, size=args.size, seed=0)
        data = open_dataset(f"synthetic:{Path(tmp) / 'scenes'}")
        make = quick_seg if args.task == "seg" else quick_depth
        protocol = make(iterations=args.iterations, batch_size=args.batch_size, lr=1e-3,
                        size=args.size)
        _, cached = train_probe(model, data, args.task, protocol, cache=True)
        _, fresh = train_probe(model, data, args.task, protocol, cache=False)
    device = f"CPU, {torch.get_num_threads()} threads"
    print(f"{args.task} probe, {args.backbone} (random weights), {len(data.train)} training "
          f"images at {args.size}x{args.size}, {args.iterations} iterations of batch "
          f"{args.batch_size}, {device}")
    print(f"  cached features : extraction {cached['extract_s']:.1f} s once + training "
          f"{cached['train_s']:.2f} s")
    print(f"  recompute       : training {fresh['train_s']:.1f} s")
    print(f"  training ratio (recompute / cached): {fresh['train_s'] / cached['train_s']:.0f}x "
          f"(goal >= 10x); with the extraction counted: "
          f"{fresh['train_s'] / (cached['train_s'] + cached['extract_s']):.1f}x")


if __name__ == "__main__":
    main()
