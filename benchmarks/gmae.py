"""The cost of GMAE's splatting: a training step of GMAE beside pixel-MAE's (same encoder,
data and batch), the share of the step spent rendering (the paper: 1.5%), and how the step
grows with the number of Gaussians k. Interleaved medians, in one run; the CUDA rows print
when a GPU is present (gsplat backend).

    python benchmarks/gmae.py [--size 64] [--batch 8] [--repeats 5] [--ks 64,128,256,512,1024]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import fit3d_hub.gmae as gmae  # noqa: E402
from training.gmae.config import GmaeConfig  # noqa: E402
from training.gmae.run import build_model  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class _RenderClock:
    """Wraps :func:`fit3d_hub.gmae.render` and adds up its time (forward)."""

    def __init__(self, device: torch.device):
        self.device, self.seconds, self.inner = device, 0.0, gmae.render

    def __call__(self, *args, **kwargs):
        _sync(self.device)
        start = time.perf_counter()
        out = self.inner(*args, **kwargs)
        _sync(self.device)
        self.seconds += time.perf_counter() - start
        return out


def step_time(config: GmaeConfig, device: torch.device, batch: int, repeats: int
              ) -> tuple[float, float]:
    """Median seconds of a forward + backward + AdamW step, and the median forward render
    time within it."""
    backend = "gsplat" if device.type == "cuda" else "torch"
    model = build_model(config, backend).to(device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    x = torch.randn(batch, 3, config.image_size, config.image_size, device=device)
    clock = _RenderClock(device)
    import training.gmae.model as model_module

    model_module.render = clock
    steps, renders = [], []
    try:
        for i in range(repeats + 1):
            clock.seconds = 0.0
            _sync(device)
            start = time.perf_counter()
            loss, _, _ = model(x, torch.Generator().manual_seed(i))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            _sync(device)
            if i:  # the first is a warm-up
                steps.append(time.perf_counter() - start)
                renders.append(clock.seconds)
    finally:
        model_module.render = clock.inner
    return statistics.median(steps), statistics.median(renders)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64, help="image side (CPU default 64)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ks", default="64,128,256,512,1024")
    parser.add_argument("--base", action="store_true",
                        help="MAE's ViT-B/16 encoder and 512-d 8-block decoder (GPU sizes)")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tiny = {} if args.base else {"embed_dim": 192, "depth": 6, "num_heads": 3,
                                 "decoder_dim": 128, "decoder_depth": 2, "decoder_heads": 4}
    arch = "vit_base_patch16_224" if args.base else "vit_small_patch16_224"

    def config(decoder: str, k: int = 256) -> GmaeConfig:
        return GmaeConfig(architecture=arch, image_size=args.size, decoder=decoder,
                          num_gaussians=k, **tiny)

    where = torch.cuda.get_device_name() if device.type == "cuda" else \
        f"CPU, {torch.get_num_threads()} threads"
    print(f"{where}; {arch}{'' if args.base else ' (192-d, 6 blocks)'}, {args.size} px, batch "
          f"{args.batch}; medians of {args.repeats} steps (forward, backward, AdamW)")
    pixel, _ = step_time(config("pixels"), device, args.batch, args.repeats)
    gauss, render = step_time(config("gaussians"), device, args.batch, args.repeats)
    print(f"pixel-MAE step {pixel * 1e3:.1f} ms; GMAE (k=256) step {gauss * 1e3:.1f} ms: "
          f"**{gauss / pixel:.2f}x**; forward splatting {render * 1e3:.1f} ms = "
          f"{render / gauss:.1%} of the GMAE step (paper: 1.5% on GPUs)")
    print("| k | GMAE step | splatting (forward) | share |")
    print("|---|---|---|---|")
    for k in (int(v) for v in args.ks.split(",")):
        step, render = step_time(config("gaussians", k), device, args.batch, args.repeats)
        print(f"| {k} | {step * 1e3:.1f} ms | {render * 1e3:.1f} ms | {render / step:.1%} |",
              flush=True)


if __name__ == "__main__":
    main()
