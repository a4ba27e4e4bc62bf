"""Stage 1 speed and memory, measured side by side in one run (not a test).

For each backend available here (torch always; gsplat with CUDA) and several scene sizes:
iterations per second of the full Stage 1 step (RGB + feature render, losses, backward,
Adam) and the peak memory it adds. Then the teacher cache: a step that reads the cached
features vs. a step that recomputes the teacher forward (DINOv2-S architecture, random
weights), timed interleaved; the ratio is what the cache saves. On CUDA it also projects
30,000 iterations at ScanNet++ scale (876x584 views, ~1M Gaussians).

    python benchmarks/lift.py [--iterations 20] [--sizes 64,128] [--gaussians 2000,8000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fit3d_hub import load_fit3d  # noqa: E402
from fit3d_hub.render.backends import gsplat_available  # noqa: E402
from scenes.load import load_scene  # noqa: E402
from scenes.synthetic import generate  # noqa: E402
from scenes.types import Scene  # noqa: E402
from scenes.views import load_views  # noqa: E402
from training.fit3d.lift.config import LiftConfig  # noqa: E402
from training.fit3d.lift.teacher import compute_teacher_features  # noqa: E402
from training.fit3d.lift.trainer import SceneViews, lift_scene  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from memory import peak_memory  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_views(size: int, device: torch.device, workdir: Path, points: int,
               teacher_dim: int = 384) -> tuple[Scene, SceneViews]:
    """A synthetic scene whose surface point cloud has ``points`` points (the Gaussians)."""
    path = generate(workdir / f"s{size}_{points}", scenes=1, views=8, size=size, seed=0,
                    points=points)[0]
    scene = load_scene(path)
    h, w = scene.frames[0].camera.height, scene.frames[0].camera.width
    teacher = torch.randn(len(scene.frames), teacher_dim, max(1, h // 14), max(1, w // 14))
    return scene, SceneViews.from_images(load_views(scene), teacher.half(), device)


def iterations_per_second(scene: Scene, views: SceneViews, gaussians: int, backend: str,
                          device: torch.device, iterations: int) -> float:
    """Stage 1 steps per second at a fixed Gaussian count (densification off)."""
    config = LiftConfig(iterations=iterations, max_points=gaussians,
                        refine_start_iter=10**9, refine_stop_iter=10**9 + 1)
    lift_scene(scene, views, LiftConfig(iterations=2, max_points=gaussians,
                                        refine_start_iter=10**9, refine_stop_iter=10**9 + 1),
               backend=backend, device=device)  # warm-up
    _sync(device)
    start = time.perf_counter()
    lift_scene(scene, views, config, backend=backend, device=device)
    _sync(device)
    return iterations / (time.perf_counter() - start)


def teacher_cache_ratio(device: torch.device, workdir: Path, size: int, repeats: int) -> dict:
    """Median step time with the cache vs. with a teacher forward added (interleaved)."""
    teacher = load_fit3d("dinov2_small", pretrained=False, mode="original", device=device)
    path = generate(workdir / "teacher", scenes=1, views=4, size=size, seed=1, points=5000)[0]
    scene = load_scene(path)
    images = load_views(scene).images
    feats = compute_teacher_features(teacher, images, device=device)
    views = SceneViews.from_images(load_views(scene), feats, device)
    step = LiftConfig(iterations=1, max_points=5000, refine_start_iter=10**9,
                      refine_stop_iter=10**9 + 1)
    cached, recomputed = [], []
    backend = "torch" if device.type == "cpu" else "gsplat"
    lift_scene(scene, views, step, backend=backend, device=device)
    for i in range(repeats):
        for mode in (("cache", "recompute") if i % 2 == 0 else ("recompute", "cache")):
            _sync(device)
            start = time.perf_counter()
            if mode == "recompute":
                compute_teacher_features(teacher, images[i % len(images)][None], device=device)
            lift_scene(scene, views, step, backend=backend, device=device)
            _sync(device)
            (recomputed if mode == "recompute" else cached).append(time.perf_counter() - start)
    c, r = statistics.median(cached), statistics.median(recomputed)
    return {"cached_s": c, "recompute_s": r, "ratio": r / c}


def _row(backend: str, size: int, n: int, iterations: int) -> dict:
    """One table row: steps per second, then the peak a short run adds (own process)."""
    device = torch.device("cuda" if backend == "gsplat" else "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        scene, views = make_views(size, device, Path(tmp), n)
        rate = iterations_per_second(scene, views, n, backend, device, iterations)
        peak = peak_memory(lambda: iterations_per_second(scene, views, n, backend, device, 3),
                           device)
    return {"rate": rate, "peak": peak, "width": views.width, "height": views.height}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_row":
        print(json.dumps(_row(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]),
                              int(sys.argv[5]))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--sizes", default="64,128")
    parser.add_argument("--gaussians", default="2000,8000")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    backends = ["torch"] + (["gsplat"] if gsplat_available() else [])
    sizes = [int(s) for s in args.sizes.split(",")]
    counts = [int(g) for g in args.gaussians.split(",")]
    device_name = torch.cuda.get_device_name() if torch.cuda.is_available() else \
        f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {device_name}; torch {torch.__version__}")
    print(f"{'backend':8} {'image':>9} {'gaussians':>9} {'it/s':>8} {'peak MiB':>9}")
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        for backend in backends:
            for size in sizes:
                for n in counts:
                    # each row in a fresh process: memory an earlier row freed stays in the
                    # allocator and would hide this row's growth
                    out = subprocess.run([sys.executable, __file__, "_row", backend, str(size),
                                          str(n), str(args.iterations)],
                                         capture_output=True, text=True, check=True)
                    row = json.loads(out.stdout.strip().splitlines()[-1])
                    rates[(backend, size, n)] = row["rate"]
                    print(f"{backend:8} {row['width']:4}x{row['height']:<4} {n:9} "
                          f"{row['rate']:8.2f} {row['peak'] / 2**20:9.1f}", flush=True)
        if "gsplat" in backends:
            for size in sizes:
                for n in counts:
                    print(f"gsplat / torch speed-up at {size}px, {n} Gaussians: "
                          f"{rates[('gsplat', size, n)] / rates[('torch', size, n)]:.1f}x")
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        cache = teacher_cache_ratio(device, Path(tmp), 224, args.repeats)
        print(f"teacher cache (DINOv2-S, 224 px views, 5000 Gaussians): step "
              f"{cache['cached_s'] * 1e3:.1f} ms cached vs {cache['recompute_s'] * 1e3:.1f} ms "
              "recomputing -> "
              f"recompute / cache = {cache['ratio']:.2f}x")
        if "gsplat" in backends:
            scene, views = make_views(876, device, Path(tmp), 1_000_000)
            rate = iterations_per_second(scene, views, 1_000_000, "gsplat", device,
                                         args.iterations)
            print(f"ScanNet++ scale (876x584, 1M Gaussians): {rate:.1f} it/s -> 30,000 iterations "
                  f"in {30_000 / rate / 60:.1f} min (goal <= 10 min on one H100)")


if __name__ == "__main__":
    main()
