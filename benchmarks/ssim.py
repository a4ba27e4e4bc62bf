"""Stage 1's SSIM (ours) beside torchmetrics', the kept library that has one: value and time.

The authors' Stage 1 loss is 3DGS's ``loss_utils.ssim``: an 11x11 Gaussian window (sigma
1.5) applied as a zero-padded "same" convolution, the map averaged over every pixel.
torchmetrics' ``structural_similarity_index_measure`` pads by reflection and crops the
border before averaging, so it measures something else at the edges of a render; gsplat's
examples use ``fused_ssim``, which matches 3DGS but runs on CUDA only. This script prints,
for renders of Stage 1's sizes, the mean |difference| of the two losses (1 - SSIM) and the
gradient cosine, and the time ratio of forward + backward, measured side by side.

    pip install torchmetrics   # not a dependency of fit3d-hub
    python benchmarks/ssim.py [--repeats 20]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.fit3d.lift.losses import ssim  # noqa: E402


def _timed(fn, x, y, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        a = x.clone().requires_grad_(True)
        start = time.perf_counter()
        fn(a, y).backward()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    try:
        from torchmetrics.functional.image import structural_similarity_index_measure
    except ImportError:
        sys.exit("benchmarks/ssim.py compares with torchmetrics: pip install torchmetrics")

    def ours(a, b):
        return 1 - ssim(a, b).mean()

    def theirs(a, b):
        return 1 - structural_similarity_index_measure(a, b, data_range=1.0)

    torch.manual_seed(0)
    print("| render | loss ours | loss torchmetrics | |diff| | grad cosine | time ours / "
          "torchmetrics |")
    print("|---|---|---|---|---|---|")
    for h, w in ((48, 64), (192, 256), (584, 876)):
        target = torch.rand(1, 3, h, w)
        render = (target + 0.1 * torch.randn_like(target)).clamp(0, 1)
        grads = []
        losses = []
        for fn in (ours, theirs):
            x = render.clone().requires_grad_(True)
            loss = fn(x, target)
            loss.backward()
            grads.append(x.grad.flatten())
            losses.append(float(loss))
        cosine = float(torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0))
        t_ours = _timed(ours, render, target, args.repeats)
        t_theirs = _timed(theirs, render, target, args.repeats)
        print(f"| {w}x{h} | {losses[0]:.5f} | {losses[1]:.5f} | "
              f"{abs(losses[0] - losses[1]):.5f} | {cosine:.4f} | {t_ours / t_theirs:.2f} |")


if __name__ == "__main__":
    main()
