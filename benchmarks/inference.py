"""FiT3D concat forward vs. two standalone timm forwards on the same input (one run).

Prints the time ratio (goal: <= 1.03) and the peak memory of each, measured side by side:
timings interleave the two variants and take medians; CPU peak memory is the growth of the
resident set during the forward, each variant in a fresh process (CUDA: max allocated).

    python benchmarks/inference.py [--backbone dinov2_small] [--batch 4] [--size 224]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch

from fit3d_hub import FiT3D, load_fit3d


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


def peak_memory_child(backbone: str, variant: str, batch: int, size: int) -> int:
    """Run in a fresh process: bytes the forward adds to the peak resident set."""
    import resource

    model = load_fit3d(backbone, pretrained=False)
    x = torch.randn(batch, 3, size, size)
    with torch.inference_mode():
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        model(x) if variant == "fit3d" else two_timm_forwards(model, x)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (after - before) * 1024  # ru_maxrss is in KiB on Linux


def peak_memory(args: argparse.Namespace, variant: str, device: torch.device) -> int:
    if device.type == "cuda":
        model = load_fit3d(args.backbone, pretrained=False, device=device)
        x = torch.randn(args.batch, 3, args.size, args.size, device=device)
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        with torch.inference_mode():
            model(x) if variant == "fit3d" else two_timm_forwards(model, x)
        return torch.cuda.max_memory_allocated() - base
    cmd = [sys.executable, __file__, "--child", variant, "--backbone", args.backbone,
           "--batch", str(args.batch), "--size", str(args.size)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_bytes"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="dinov2_small")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--child", choices=("fit3d", "timm"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps({"peak_bytes": peak_memory_child(args.backbone, args.child, args.batch,
                                                          args.size)}))
        return

    device = torch.device(args.device)
    model = load_fit3d(args.backbone, pretrained=False, device=device)  # weights do not matter
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    t_fit3d, t_timm = time_interleaved(model, x, args.repeats)
    mem_fit3d, mem_timm = peak_memory(args, "fit3d", device), peak_memory(args, "timm", device)
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
