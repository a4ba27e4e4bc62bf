"""FiT3D concat forward vs. two standalone timm forwards on the same input (one run).

Prints the time ratio (goal: <= 1.03) and the peak memory of each, measured side by side:
timings interleave the two variants and take medians; peak memory is what one forward adds
(CPU: resident set sampled every millisecond; CUDA: max allocated), median of three.

    python benchmarks/inference.py [--backbone dinov2_small] [--batch 4] [--size 224]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from fit3d_hub import FiT3D, load_fit3d

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory import peak_memory


def two_timm_forwards(model: FiT3D, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The baseline: what a user would run without this package."""
    return model.original.forward_features(x), model.finetuned.forward_features(x)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_interleaved(model: FiT3D, x: torch.Tensor, repeats: int) -> tuple[float, float]:
    """Median seconds of (FiT3D forward, two timm forwards), alternating to share the noise."""
    fit3d, timm_pair = [], []
    with torch.inference_mode():
        for _ in range(3):  # warm-up both
            model(x)
            two_timm_forwards(model, x)
        for i in range(repeats):
            order = ((model, fit3d), (None, timm_pair)) if i % 2 == 0 else \
                ((None, timm_pair), (model, fit3d))
            for which, bucket in order:
                _sync(x.device)
                start = time.perf_counter()
                model(x) if which is not None else two_timm_forwards(model, x)
                _sync(x.device)
                bucket.append(time.perf_counter() - start)
    return statistics.median(fit3d), statistics.median(timm_pair)


def forward_peak(model: FiT3D, x: torch.Tensor, variant: str) -> int:
    """Bytes one forward of ``variant`` adds at its peak."""
    def run() -> None:
        with torch.inference_mode():
            model(x) if variant == "fit3d" else two_timm_forwards(model, x)

    return peak_memory(run, x.device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="dinov2_small")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    device = torch.device(args.device)
    model = load_fit3d(args.backbone, pretrained=False, device=device)  # weights do not matter
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    t_fit3d, t_timm = time_interleaved(model, x, args.repeats)
    mem_fit3d = statistics.median(forward_peak(model, x, "fit3d") for _ in range(3))
    mem_timm = statistics.median(forward_peak(model, x, "timm") for _ in range(3))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU, {torch.get_num_threads()} threads"
    print(f"backbone={args.backbone} batch={args.batch} size={args.size} device={name} "
          f"torch={torch.__version__}")
    print(f"FiT3D concat forward : {t_fit3d * 1e3:8.1f} ms   peak +{mem_fit3d / 2**20:7.1f} MiB")
    print(f"two timm forwards    : {t_timm * 1e3:8.1f} ms   peak +{mem_timm / 2**20:7.1f} MiB")
    print(f"time ratio (FiT3D / timm): {t_fit3d / t_timm:.3f}   (goal <= 1.03)")
    print(f"memory ratio (FiT3D / timm): {mem_fit3d / max(mem_timm, 1):.3f}")


if __name__ == "__main__":
    main()
