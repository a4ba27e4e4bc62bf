"""The PyTorch rasterizer against gsplat's own PyTorch reference, side by side in one run.

Speed: forward + backward (RGB and alpha with random output gradients; then RGB plus 64-d
features as Stage 1 renders them) of ``fit3d_hub.render.torch_rasterizer`` and of gsplat's
reference pipeline (``gsplat.rendering._rasterization``, whose CUDA pieces
``benchmarks/gsplat_cpu.py`` ports to PyTorch), interleaved, medians. Memory: the peak the
forward + backward adds, each configuration in a fresh process, against image size and
Gaussian count, with the tile intersections and the contributing (pixel, Gaussian) pairs.
On CUDA the PyTorch backend's rows print for the GPU too (speed against gsplat's CUDA
kernels, memory as the allocator's peak).

    python benchmarks/rasterizer.py [speed] [memory] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from gsplat_cpu import gsplat_reference, gsplat_reference_on_cpu  # noqa: E402
from memory import peak_memory  # noqa: E402

from fit3d_hub.render.torch_rasterizer import (  # noqa: E402
    rasterization,
    rasterization_with_features,
)

SPEED_CASES = ((128, 96, 8_000), (256, 192, 20_000))
MEMORY_SIZES = ((64, 48), (128, 96), (256, 192), (512, 384))
MEMORY_COUNTS = (2_000, 8_000, 20_000, 100_000)


def random_scene(n: int, width: int, height: int, cams: int = 2, max_scale: float = 0.1,
                 seed: int = 0, device: str = "cpu") -> dict:
    """``n`` Gaussians (scales up to ``max_scale``) in front of ``cams`` cameras."""
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(n, 3, generator=g) * torch.tensor([3.0, 2.4, 3.0]) \
        - torch.tensor([1.5, 1.2, -2.0])
    quats = torch.randn(n, 4, generator=g)
    scales = torch.rand(n, 3, generator=g) * (max_scale - 0.005) + 0.005
    opacities = torch.rand(n, generator=g) * 0.9 + 0.05
    colors = torch.rand(n, 3, generator=g)
    features = torch.randn(n, 64, generator=g)
    viewmats = torch.eye(4).repeat(cams, 1, 1)
    for c in range(1, cams):  # each further camera turned 8 degrees and shifted
        a = torch.tensor(0.14 * c)
        viewmats[c, 0, 0], viewmats[c, 0, 2] = torch.cos(a), torch.sin(a)
        viewmats[c, 2, 0], viewmats[c, 2, 2] = -torch.sin(a), torch.cos(a)
        viewmats[c, 0, 3] = -0.3 * c
    f = 0.9 * width
    Ks = torch.tensor([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1.0]]).repeat(cams, 1, 1)
    scene = {"means": means, "quats": quats, "scales": scales, "opacities": opacities,
             "colors": colors, "features": features, "viewmats": viewmats, "Ks": Ks}
    return {k: v.to(device) for k, v in scene.items()}


def _step(render, scene: dict, width: int, height: int, with_features: bool) -> None:
    params = {k: scene[k].clone().requires_grad_() for k in
              ("means", "quats", "scales", "opacities", "colors", "features")}
    g = torch.Generator(device=scene["means"].device).manual_seed(1)
    outputs = render(params, scene, width, height, with_features)
    loss = sum((o * torch.randn(o.shape, generator=g, device=o.device)).sum() for o in outputs)
    loss.backward()


def ours(params: dict, scene: dict, width: int, height: int, with_features: bool):
    args = (params["means"], params["quats"], params["scales"], params["opacities"],
            params["colors"])
    if with_features:
        rgb, alpha, feats, _ = rasterization_with_features(
            *args, params["features"], scene["viewmats"], scene["Ks"], width, height)
        return rgb, alpha, feats
    rgb, alpha, _ = rasterization(*args, scene["viewmats"], scene["Ks"], width, height)
    return rgb, alpha


def reference(params: dict, scene: dict, width: int, height: int, with_features: bool):
    """gsplat's reference; features as the gsplat backend renders them (a second call on
    detached geometry)."""
    geo = [params[k] for k in ("means", "quats", "scales", "opacities")]
    rgb, alpha, _ = gsplat_reference(*geo, params["colors"], scene["viewmats"], scene["Ks"],
                                     width, height)
    if not with_features:
        return rgb, alpha
    feats, _, _ = gsplat_reference(*(t.detach() for t in geo), params["features"],
                                   scene["viewmats"], scene["Ks"], width, height,
                                   channel_chunk=64)
    return rgb, alpha, feats


def speed(repeats: int) -> None:
    print(f"CPU, {torch.get_num_threads()} threads; forward + backward, medians of {repeats} "
          "interleaved runs (2 cameras)")
    print("| image | Gaussians | render | ours | gsplat reference | ours / reference |")
    print("|---|---|---|---|---|---|")
    with gsplat_reference_on_cpu():
        for width, height, n in SPEED_CASES:
            scene = random_scene(n, width, height)
            for with_features in (False, True):
                t = _timed({"ours": ours, "reference": reference}, scene, width, height,
                           with_features, repeats)
                mine, ref = t["ours"], t["reference"]
                what = "RGB + 64-d features" if with_features else "RGB"
                print(f"| {width}x{height} | {n:,} | {what} | {mine * 1e3:.0f} ms | "
                      f"{ref * 1e3:.0f} ms | **{mine / ref:.2f}x** |", flush=True)


def gsplat_cuda(params: dict, scene: dict, width: int, height: int, with_features: bool):
    """gsplat's fused CUDA rasterizer, features as the gsplat backend renders them."""
    from gsplat import rasterization as fused

    geo = [params[k] for k in ("means", "quats", "scales", "opacities")]
    rgb, alpha, _ = fused(*geo, params["colors"], scene["viewmats"], scene["Ks"], width,
                          height)
    if not with_features:
        return rgb, alpha
    feats, _, _ = fused(*(t.detach() for t in geo), params["features"], scene["viewmats"],
                        scene["Ks"], width, height, channel_chunk=64)
    return rgb, alpha, feats


def _timed(fns: dict, scene: dict, width: int, height: int, with_features: bool,
           repeats: int) -> dict[str, float]:
    """Median seconds per forward + backward of each of ``fns``, interleaved."""
    sync = torch.cuda.synchronize if scene["means"].is_cuda else (lambda: None)
    times = {name: [] for name in fns}
    for fn in fns.values():  # warm up
        _step(fn, scene, width, height, with_features)
    for i in range(repeats):
        order = list(fns.items())
        for name, fn in (order if i % 2 == 0 else order[::-1]):
            sync()
            start = time.perf_counter()
            _step(fn, scene, width, height, with_features)
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def speed_cuda(repeats: int) -> None:
    """On a GPU: the PyTorch backend (gsplat's fallback) against gsplat's CUDA kernels."""
    print(f"\n{torch.cuda.get_device_name()}; forward + backward, medians of {repeats} "
          "interleaved runs (2 cameras)")
    print("| image | Gaussians | render | ours (PyTorch) | gsplat CUDA | ours / gsplat |")
    print("|---|---|---|---|---|---|")
    for width, height, n in SPEED_CASES:
        scene = random_scene(n, width, height, device="cuda")
        for with_features in (False, True):
            fns = {"ours": ours, "gsplat": gsplat_cuda}
            try:
                t = _timed(fns, scene, width, height, with_features, repeats)
            except Exception as err:  # gsplat's kernels build on first use and may not
                print(f"gsplat CUDA unavailable ({type(err).__name__}: {err}); PyTorch only")
                t = {**_timed({"ours": ours}, scene, width, height, with_features, repeats),
                     "gsplat": float("nan")}
            what = "RGB + 64-d features" if with_features else "RGB"
            print(f"| {width}x{height} | {n:,} | {what} | {t['ours'] * 1e3:.1f} ms | "
                  f"{t['gsplat'] * 1e3:.1f} ms | **{t['ours'] / t['gsplat']:.2f}x** |",
                  flush=True)


def _measure(width: int, height: int, n: int, device: str) -> dict:
    """One memory row (runs in its own process)."""
    scene = random_scene(n, width, height, device=device)
    dev = torch.device(device)
    peak = peak_memory(lambda: _step(ours, scene, width, height, True), dev)
    with torch.no_grad():
        _, _, meta = rasterization(scene["means"], scene["quats"], scene["scales"],
                                   scene["opacities"], scene["colors"], scene["viewmats"],
                                   scene["Ks"], width, height)
    pairs = _contributing_pairs(scene, width, height) if device == "cpu" else None
    return {"peak": peak, "isects": meta["n_isects"], "pairs": pairs}


def _contributing_pairs(scene: dict, width: int, height: int) -> int:
    """How many (pixel, Gaussian) pairs composite: gsplat's index kernel (ported) counts."""
    from gsplat_cpu import isect_tiles, rasterize_to_indices_in_range

    from fit3d_hub.render.torch_rasterizer import project

    proj = project(scene["means"], scene["quats"], scene["scales"], scene["viewmats"],
                   scene["Ks"], width, height)
    tiles_x, tiles_y = -(-width // 16), -(-height // 16)
    _, isect_ids, flatten_ids = isect_tiles(proj["means2d"], proj["radii"], proj["depths"], 16,
                                            tiles_x, tiles_y)
    from gsplat.cuda._torch_impl import _isect_offset_encode

    cams = scene["viewmats"].shape[0]
    offsets = _isect_offset_encode(isect_ids, cams, tiles_x, tiles_y)
    opac = scene["opacities"][None].expand(cams, -1)
    gauss, _, _ = rasterize_to_indices_in_range(
        0, 10**9, torch.ones(cams, height, width), proj["means2d"], proj["conics"], opac,
        width, height, 16, offsets, flatten_ids)
    return len(gauss)


def memory() -> None:
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        print(f"\npeak memory added by forward + backward of RGB + 64-d features, 2 cameras, "
              f"{device} ({'resident set' if device == 'cpu' else 'max allocated'}), each "
              "row in a fresh process")
        print("| image | Gaussians | tile intersections | contributing pairs | peak MiB | "
              "bytes / pair |")
        print("|---|---|---|---|---|---|")
        for width, height in MEMORY_SIZES:
            for n in MEMORY_COUNTS:
                out = subprocess.run(
                    [sys.executable, __file__, "_row", str(width), str(height), str(n), device],
                    capture_output=True, text=True, check=True)
                row = json.loads(out.stdout.strip().splitlines()[-1])
                pairs = row["pairs"]
                per = f"{row['peak'] / pairs:.0f}" if pairs else "-"
                print(f"| {width}x{height} | {n:,} | {row['isects']:,} | "
                      f"{pairs if pairs is None else f'{pairs:,}'} | {row['peak'] / 2**20:.0f} | "
                      f"{per} |", flush=True)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_row":
        width, height, n, device = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), \
            sys.argv[5]
        print(json.dumps(_measure(width, height, n, device)))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parts", nargs="*", default=["speed", "memory"],
                        choices=["speed", "memory"])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if "speed" in args.parts:
        speed(args.repeats)
        if torch.cuda.is_available():
            speed_cuda(args.repeats)
    if "memory" in args.parts:
        memory()


if __name__ == "__main__":
    main()
