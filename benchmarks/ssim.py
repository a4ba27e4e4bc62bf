"""Stage 1's SSIM (ours) beside the 2D-window formulation of 3DGS and beside torchmetrics':
value, gradient and time, measured side by side.

The authors' Stage 1 loss is 3DGS's ``loss_utils.ssim``: an 11x11 Gaussian window (sigma
1.5) applied as a zero-padded "same" convolution, the map averaged over every pixel. Ours
applies the same window as two 1D passes (``reference`` below is the 2D one, as 3DGS writes
it). torchmetrics' ``structural_similarity_index_measure`` pads by reflection and crops the
border before averaging, so it measures something else at the edges of a render; gsplat's
examples use ``fused_ssim``, which matches 3DGS but runs on CUDA only.

    pip install torchmetrics   # not a dependency of fit3d-hub
    python benchmarks/ssim.py [--repeats 10]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.fit3d.lift.losses import gaussian_kernel, ssim  # noqa: E402


def reference(x: torch.Tensor, y: torch.Tensor, window: int = 11, sigma: float = 1.5
              ) -> torch.Tensor:
    """3DGS's formulation: the 2D window, one convolution per moment."""
    c = x.shape[1]
    g = gaussian_kernel(window, sigma, x)
    w = (g[:, None] * g[None, :]).expand(c, 1, window, window).contiguous()
    pad = window // 2
    mu_x = F.conv2d(x, w, padding=pad, groups=c)
    mu_y = F.conv2d(y, w, padding=pad, groups=c)
    sxx = F.conv2d(x * x, w, padding=pad, groups=c) - mu_x**2
    syy = F.conv2d(y * y, w, padding=pad, groups=c) - mu_y**2
    sxy = F.conv2d(x * y, w, padding=pad, groups=c) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    return ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))


def _run(fn, x, y) -> tuple[float, torch.Tensor, torch.Tensor, float]:
    a = x.clone().requires_grad_(True)
    start = time.perf_counter()
    loss = fn(a, y)
    loss.backward()
    return time.perf_counter() - start, loss.detach(), a.grad.flatten()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    try:
        from torchmetrics.functional.image import structural_similarity_index_measure
    except ImportError:
        sys.exit("benchmarks/ssim.py compares with torchmetrics: pip install torchmetrics")

    losses = {
        "ours": lambda a, b: 1 - ssim(a, b).mean(),
        "3DGS 2D window": lambda a, b: 1 - reference(a, b).mean(),
        "torchmetrics": lambda a, b: 1 - structural_similarity_index_measure(a, b,
                                                                              data_range=1.0),
    }
    torch.manual_seed(0)
    print("| render | loss: ours / 3DGS 2D / torchmetrics | max |ours - 2D| per pixel | "
          "grad cosine ours-torchmetrics | time ours : 2D : torchmetrics (ms) |")
    print("|---|---|---|---|---|")
    for h, w in ((48, 64), (192, 256), (584, 876)):
        target = torch.rand(1, 3, h, w)
        render = (target + 0.1 * torch.randn_like(target)).clamp(0, 1)
        times = {k: [] for k in losses}
        for _ in range(args.repeats):  # interleaved, so load swings hit all three alike
            for name, fn in losses.items():
                times[name].append(_run(fn, render, target)[0])
        out = {k: _run(fn, render, target) for k, fn in losses.items()}
        per_pixel = float((ssim(render, target) - reference(render, target)).abs().max())
        cosine = float(F.cosine_similarity(out["ours"][2], out["torchmetrics"][2], dim=0))
        ms = " : ".join(f"{1000 * sorted(t)[len(t) // 2]:.1f}" for t in times.values())
        values = " / ".join(f"{float(v[1]):.5f}" for v in out.values())
        print(f"| {w}x{h} | {values} | {per_pixel:.1e} | {cosine:.4f} | {ms} |")


if __name__ == "__main__":
    main()
