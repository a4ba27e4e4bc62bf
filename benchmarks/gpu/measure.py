"""The GPU rows of every benchmark, one step at a time, each writing ``OUT/<step>.json``.

    python benchmarks/gpu/measure.py STEP --out DIR [--dry-run]

Steps (``benchmarks/gpu/run.sh`` runs them all, each under its own time limit):

- ``parity``: gsplat's CUDA rasterizer against the PyTorch backend on random scenes: colours,
  alphas, 64-d features and the gradient of every input, with the tolerances below;
- ``rasterizer``: forward + backward time of both at 876x584 with 100k and 1M Gaussians (RGB
  plus 64-d features, Stage 1's render);
- ``stage1``: Stage 1 at ScanNet++ scale (876x584 views, ~1M Gaussians, 64-d features,
  densification off): iterations per second, peak memory, projected 30,000-iteration scene;
- ``stage2``: a Stage 2 step at the paper's size (DINOv2-S architecture, random weights,
  bf16, batch 2) split into render / forward-backward / optimiser; projected 140,451-view
  epoch;
- ``equivariance``: one step of the equivariance method at its 1120 px input;
- ``gmae``: a GMAE step (ViT-B/16, 224 px, k = 256) beside pixel-MAE's, and the forward
  splatting's share of it (the paper: 1.5%);
- ``inference``: FiT3D's concat forward against two bare timm forwards (bf16, eager and
  ``torch.compile``), images per second and peak memory at 518x518 for DINOv2-S and
  ViT-B/16.

``--dry-run`` runs the same code on CPU at toy sizes (CI does, so a broken step is found
before a GPU is lent); parity then compares the PyTorch backend with the CPU port of gsplat's
own pipeline (``benchmarks/gsplat_cpu.py``).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path[:0] = [str(ROOT), str(HERE.parent)]

from gsplat_cpu import gsplat_reference_on_cpu  # noqa: E402
from memory import peak_memory  # noqa: E402
from rasterizer import gsplat_cuda, ours, random_scene, reference  # noqa: E402

PAPER_VIEWS = 140_451
"""Views in the paper's Stage 2 epoch (230 ScanNet++ scenes)."""
TOLERANCE = {"rgb": 1e-3, "alpha": 1e-3, "features": 5e-3, "grad": 5e-2}
"""Parity limits: the largest absolute difference of an output, relative to its largest
magnitude; for gradients, 1 - cosine similarity. The two sum Gaussians in different orders
(tiles, atomics) in float32, so they agree to rounding, not to the bit."""


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _device(dry_run: bool) -> torch.device:
    if dry_run:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise SystemExit("this step needs CUDA (or --dry-run)")
    return torch.device("cuda")


def _median_time(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync()
        start = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# parity ---------------------------------------------------------------------------------

def _outputs_and_grads(render, scene: dict, width: int, height: int) -> dict[str, torch.Tensor]:
    params = {k: scene[k].clone().requires_grad_() for k in
              ("means", "quats", "scales", "opacities", "colors", "features")}
    rgb, alpha, feats = render(params, scene, width, height, True)
    g = torch.Generator(device=rgb.device).manual_seed(1)
    loss = sum((o * torch.randn(o.shape, generator=g, device=o.device)).sum()
               for o in (rgb, alpha, feats))
    loss.backward()
    out = {"rgb": rgb, "alpha": alpha, "features": feats}
    out.update({f"grad.{k}": p.grad for k, p in params.items()})
    return {k: v.detach().float().cpu() for k, v in out.items()}


def parity(dry_run: bool) -> dict:
    device = _device(dry_run)
    cases = [(32, 24, 150, s) for s in range(2)] if dry_run else \
        [(128, 96, 5_000, s) for s in range(3)] + [(256, 192, 20_000, 3)]
    rows, ok = [], True
    for width, height, n, seed in cases:
        scene = random_scene(n, width, height, seed=seed, device=str(device))
        mine = _outputs_and_grads(ours, scene, width, height)
        if dry_run:
            with gsplat_reference_on_cpu():
                theirs = _outputs_and_grads(reference, scene, width, height)
        else:
            theirs = _outputs_and_grads(gsplat_cuda, scene, width, height)
        row = {"image": f"{width}x{height}", "gaussians": n, "seed": seed}
        for key, a in mine.items():
            b = theirs[key]
            if key.startswith("grad."):
                value = 1 - float(torch.nn.functional.cosine_similarity(
                    a.flatten(), b.flatten(), dim=0))
                limit = TOLERANCE["grad"]
            else:
                value = float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))
                limit = TOLERANCE[key]
            row[key] = value
            ok = ok and value <= limit
        rows.append(row)
    return {"reference": "gsplat CPU port" if dry_run else "gsplat CUDA", "tolerance": TOLERANCE,
            "rows": rows, "passed": ok}


# rasterizer speed -------------------------------------------------------------------------

def _render_step(render, scene: dict, width: int, height: int) -> None:
    params = {k: scene[k].clone().requires_grad_() for k in
              ("means", "quats", "scales", "opacities", "colors", "features")}
    outputs = render(params, scene, width, height, True)
    sum(o.float().mean() for o in outputs).backward()


def rasterizer(dry_run: bool) -> dict:
    device = _device(dry_run)
    cases = [(64, 48, 500)] if dry_run else [(876, 584, 100_000), (876, 584, 1_000_000)]
    rows = []
    for width, height, n in cases:
        scene = random_scene(n, width, height, cams=1, max_scale=0.03, device=str(device))
        row = {"image": f"{width}x{height}", "gaussians": n}
        impls = {"torch": ours} if dry_run else {"gsplat": gsplat_cuda, "torch": ours}
        for name, fn in impls.items():
            render = functools.partial(_render_step, fn, scene, width, height)
            try:
                once = _median_time(render, 1, 1)
                repeats = 1 if once > 5 else 5  # the PyTorch backend at 1M can take long
                row[f"{name}_ms"] = 1000 * (once if repeats == 1 else
                                            _median_time(render, repeats, 0))
            except Exception as err:  # one backend failing (memory budget, no build) is a row
                row[f"{name}_error"] = f"{type(err).__name__}: {str(err)[:300]}"
        if "gsplat_ms" in row:
            row["torch_over_gsplat"] = row["torch_ms"] / row["gsplat_ms"]
        rows.append(row)
    return {"render": "RGB + 64-d features, forward + backward", "rows": rows}


# Stage 1 ---------------------------------------------------------------------------------

def stage1(dry_run: bool) -> dict:
    from fit3d_hub.render.backends import resolve_backend
    from scenes.load import load_scene
    from scenes.synthetic import generate
    from scenes.views import load_views
    from training.fit3d.lift.config import LiftConfig
    from training.fit3d.lift.trainer import SceneViews, lift_scene

    device = _device(dry_run)
    size, points, iterations = (64, 2_000, 4) if dry_run else (876, 1_000_000, 40)
    backend = resolve_backend("torch" if dry_run else "gsplat")
    with tempfile.TemporaryDirectory() as tmp:
        path = generate(Path(tmp), scenes=1, views=4, size=size, seed=0, points=points)[0]
        scene = load_scene(path)
        images = load_views(scene)
        h, w = images.size[1], images.size[0]
        teacher = torch.randn(len(scene.frames), 384, max(1, h // 14), max(1, w // 14))
        views = SceneViews.from_images(images, teacher.half(), device)
    fixed = {"refine_start_iter": 10**9, "refine_stop_iter": 10**9 + 1}

    def run(steps: int):
        return lift_scene(scene, views, LiftConfig(iterations=steps, **fixed),
                          backend=backend, device=device)

    run(2)  # warm-up (and gsplat's first launch)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    _sync()
    start = time.perf_counter()
    result = run(iterations)
    _sync()
    seconds = time.perf_counter() - start
    rate = iterations / seconds
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else \
        peak_memory(lambda: run(2), device)
    return {"image": f"{w}x{h}", "gaussians": result.gaussians.num_gaussians,
            "feature_dim": 64, "backend": backend, "iterations_per_second": rate,
            "peak_memory_mib": peak / 2**20,
            "projected_30000_iterations_min": 30_000 / rate / 60, "goal_min": 10}


# Stage 2 ---------------------------------------------------------------------------------

def stage2(dry_run: bool) -> dict:
    from fit3d_hub import get_transform, load_fit3d
    from fit3d_hub.render.backends import resolve_backend
    from scenes.load import load_scene
    from scenes.synthetic import generate
    from training.fit3d.finetune.data import find_lifted, load_lifted_scene
    from training.fit3d.finetune.targets import make_sample, masked_l1
    from training.fit3d.finetune.trainer import PatchFeatures
    from training.fit3d.lift.gaussians import FeatureGaussians
    from training.fit3d.lift.record import LiftedMeta, output_path, save_lifted

    device = _device(dry_run)
    size, points, steps = (64, 2_000, 2) if dry_run else (876, 1_000_000, 10)
    backend = resolve_backend("torch" if dry_run else "gsplat")
    teacher = load_fit3d("dinov2_small", pretrained=False, mode="original")
    vit = teacher.original.to(device).train()
    with tempfile.TemporaryDirectory() as tmp:
        scene_dir = generate(Path(tmp) / "scenes", scenes=1, views=4, size=size, seed=0,
                             points=points)[0]
        scene = load_scene(scene_dir)
        g = FeatureGaussians.initialise(scene, feature_dim=64, teacher_dim=vit.embed_dim,
                                        sh_degree=3)
        cam = scene.frames[0].camera
        save_lifted(output_path(Path(tmp) / "lifted", scene.name), g,
                    LiftedMeta(scene.name, len(scene.frames), (cam.width, cam.height),
                               scene_path=str(scene_dir)))
        lifted = load_lifted_scene(find_lifted(Path(tmp) / "lifted")[0])
    model = PatchFeatures(vit)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=1e-4)
    transform = get_transform(teacher)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=not dry_run)
    parts = {"render": [], "forward_backward": [], "optimizer": []}
    for step in range(steps + 2):
        _sync()
        t0 = time.perf_counter()
        samples = [make_sample(lifted, (2 * step + i) % len(scene.frames), i % 2 == 0,
                               transform, backend, device) for i in range(2)]
        images = torch.stack([s.image for s in samples])
        targets = torch.stack([s.target for s in samples])
        masks = torch.stack([s.mask for s in samples])
        _sync()
        t1 = time.perf_counter()
        with autocast:
            pred = model(images)
        masked_l1(pred.float(), targets, masks).backward()
        _sync()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync()
        t3 = time.perf_counter()
        if step >= 2:
            for name, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2), strict=True):
                parts[name].append(dt)
    ms = {k: 1000 * statistics.median(v) for k, v in parts.items()}
    step_ms = sum(ms.values())
    return {"image": f"{cam.width}x{cam.height}", "gaussians": g.num_gaussians,
            "backbone": "dinov2_small (random weights)", "batch": 2,
            "precision": "fp32" if dry_run else "bf16 autocast", "backend": backend,
            **{f"{k}_ms": v for k, v in ms.items()}, "step_ms": step_ms,
            "projected_epoch_h": step_ms / 1000 * PAPER_VIEWS / 2 / 3600, "goal_h": 3,
            "paper_h": 8.5}


# equivariance ----------------------------------------------------------------------------

def equivariance(dry_run: bool) -> dict:
    from fit3d_hub import load_fit3d
    from fit3d_hub.lora import add_lora
    from fit3d_hub.refine import refine_conv
    from fit3d_hub.sampling import sample_features
    from training.equivariance.config import EquivarianceConfig
    from training.equivariance.loss import smooth_ap_loss
    from training.equivariance.network import EquivarianceNet, network_input_size

    device = _device(dry_run)
    config = EquivarianceConfig()
    width, height = (64, 48) if dry_run else (876, 584)
    target = 64 if dry_run else config.target_size
    points = 200 if dry_run else config.points
    teacher = load_fit3d("dinov2_small", pretrained=False, mode="original")
    vit = teacher.original
    add_lora(vit, config.rank, config.lora_blocks)
    net = EquivarianceNet(vit, refine_conv(teacher.embed_dim)).to(device).train()
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-5)
    size = network_input_size(height, width, teacher.patch_size, target, config.feature_stride)
    images = torch.randn(2, 3, *size, device=device)
    gen = torch.Generator().manual_seed(0)
    uv = [torch.rand(points, 2, generator=gen).numpy() * [width, height] for _ in range(2)]
    distances = torch.rand(points, points, generator=gen).to(device) * 0.2

    def step() -> None:
        maps = net(images)
        desc = [sample_features(maps[i].float(), uv[i], width, height) for i in (0, 1)]
        smooth_ap_loss(desc[0], desc[1], distances).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    seconds = _median_time(step, 2 if dry_run else 10)
    return {"input": f"{size[1]}x{size[0]}", "backbone": "dinov2_small (random weights)",
            "points_per_view": points, "precision": "fp32", "step_ms": 1000 * seconds,
            "projected_10000_steps_min": 10_000 * seconds / 60}


# GMAE ---------------------------------------------------------------------------------------

def gmae(dry_run: bool) -> dict:
    """A GMAE step (MAE's ViT-B/16 at 224, k = 256, the authors' decoder) beside pixel-MAE's,
    and the forward splatting's share (the paper: 1.5%)."""
    from gmae import step_time

    from training.gmae.config import GmaeConfig

    device = _device(dry_run)
    sizes = {"architecture": "vit_small_patch16_224", "embed_dim": 32, "depth": 1,
             "num_heads": 2, "patch_size": 8, "image_size": 16, "decoder_dim": 16,
             "decoder_depth": 1, "decoder_heads": 2, "num_gaussians": 16} if dry_run else \
        {"architecture": "vit_base_patch16_224", "image_size": 224}
    batch, repeats = (2, 1) if dry_run else (32, 5)
    pixel, _ = step_time(GmaeConfig(decoder="pixels", **sizes), device, batch, repeats)
    gauss, render_s = step_time(GmaeConfig(decoder="gaussians", **sizes), device, batch,
                                repeats)
    return {"batch": batch, "pixel_mae_step_ms": 1000 * pixel, "gmae_step_ms": 1000 * gauss,
            "gmae_over_mae": gauss / pixel, "splatting_forward_ms": 1000 * render_s,
            "splatting_share": render_s / gauss, "paper_share": 0.015}


# feed-forward lifting ------------------------------------------------------------------------

def feedforward(dry_run: bool) -> dict:
    """The feed-forward lifter at ScanNet++'s size (876x584, 2 context views, 384-d teacher):
    one lifting pass and one training step (lift, render a target, both losses, backward),
    for sensor and predicted depth; Stage 1's ``stage1`` step gives the per-scene
    optimisation it replaces."""
    from fit3d_hub.render.backends import resolve_backend
    from training.fit3d.feedforward.model import ContextViews, LifterShape

    device = _device(dry_run)
    width, height, dim = (64, 48, 32) if dry_run else (876, 584, 384)
    backend = resolve_backend("torch" if dry_run else "gsplat")
    n = 3  # 2 context views + 1 target

    def views(count: int) -> ContextViews:
        g = torch.Generator().manual_seed(count)
        w2c = torch.eye(4).repeat(count, 1, 1)
        w2c[:, 0, 3] = torch.linspace(-0.2, 0.2, count)
        K = torch.tensor([[width * 0.8, 0, width / 2], [0, width * 0.8, height / 2],
                          [0, 0, 1.0]]).repeat(count, 1, 1)
        return ContextViews(
            images=torch.rand(count, 3, height, width, generator=g).to(device),
            viewmats=w2c.to(device), Ks=K.to(device),
            teacher=torch.randn(count, dim, height // 14 or 1, width // 14 or 1,
                                generator=g).to(device),
            depth=(2 + torch.rand(count, height, width, generator=g)).to(device))

    all_views = views(n)

    def pick(idx: list[int]) -> ContextViews:
        return ContextViews(all_views.images[idx], all_views.viewmats[idx], all_views.Ks[idx],
                            all_views.teacher[idx], all_views.depth[idx])

    rows = {depth: _feedforward_row(LifterShape(teacher_dim=dim, depth=depth), backend,
                                    pick([0, 1]), pick([2]), device)
            for depth in ("sensor", "predicted")}
    return {"image": f"{width}x{height}", "context_views": 2, "teacher_dim": dim,
            "backend": backend, "rows": rows}


def _feedforward_row(shape, backend: str, context, target, device: torch.device) -> dict:
    """Gaussians, lifting-pass time and training-step time of one lifter shape."""
    from training.fit3d.feedforward.model import FeedForwardLifter
    from training.fit3d.feedforward.trainer import LifterTraining

    torch.manual_seed(0)
    lifter = FeedForwardLifter(shape).to(device)
    model = LifterTraining(lifter, backend, 0.2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def lift() -> None:
        with torch.no_grad():
            lifter(context)

    def step() -> None:
        l_rgb, l_feat, _ = model(context, target)
        (l_rgb + l_feat).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    with torch.no_grad():
        count = len(lifter(context).means)
    return {"gaussians": count, "lift_ms": 1000 * _median_time(lift, 5),
            "train_step_ms": 1000 * _median_time(step, 3)}


# inference --------------------------------------------------------------------------------

def _forward(model, x: torch.Tensor, which: str) -> None:
    from inference import two_timm_forwards

    with torch.inference_mode():
        model(x) if which == "fit3d" else two_timm_forwards(model, x)


def inference(dry_run: bool) -> dict:
    from inference import time_interleaved

    from fit3d_hub import load_fit3d

    device = _device(dry_run)
    size, batch, repeats = (56, 2, 3) if dry_run else (518, 8, 20)
    names = ["dinov2_small"] if dry_run else ["dinov2_small", "mae_base"]
    rows = []
    for name in names:
        model = load_fit3d(name, pretrained=False, device=device,
                           dtype=None if dry_run else torch.bfloat16)
        p = model.patch_size
        side = size // p * p
        x = torch.randn(batch, 3, side, side, device=device,
                        dtype=torch.float32 if dry_run else torch.bfloat16)
        for compiled in (False, True):
            if compiled and dry_run:
                continue  # compiling takes minutes on 2 CPU cores; the GPU run does it
            runner = torch.compile(model) if compiled else model
            fit3d_s, timm_s = time_interleaved(runner, x, repeats)
            row = {"model": name, "input": f"{side}x{side}", "batch": batch,
                   "compiled": compiled, "fit3d_ms": 1000 * fit3d_s, "timm_ms": 1000 * timm_s,
                   "ratio": fit3d_s / timm_s, "images_per_second": batch / fit3d_s}
            if not compiled:
                for which in ("fit3d", "timm"):
                    run = functools.partial(_forward, model, x, which)
                    row[f"{which}_peak_mib"] = peak_memory(run, device) / 2**20
            rows.append(row)
    return {"precision": "fp32" if dry_run else "bf16", "goal_ratio": 1.03, "rows": rows}


STEPS = {"parity": parity, "rasterizer": rasterizer, "stage1": stage1, "stage2": stage2,
         "equivariance": equivariance, "gmae": gmae, "feedforward": feedforward,
         "inference": inference}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=tuple(STEPS))
    parser.add_argument("--out", required=True, help="folder for <step>.json")
    parser.add_argument("--dry-run", action="store_true", help="CPU, toy sizes")
    args = parser.parse_args()
    start = time.perf_counter()
    figures = STEPS[args.step](args.dry_run)
    record = {"step": args.step, "dry_run": args.dry_run, "seconds": time.perf_counter() - start,
              "device": torch.cuda.get_device_name() if torch.cuda.is_available()
              and not args.dry_run else f"CPU ({torch.get_num_threads()} threads)",
              "torch": torch.__version__, "python": platform.python_version(), **figures}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(record, indent=1, default=lambda v: None if isinstance(v, float)
                      and not math.isfinite(v) else str(v))
    (out / f"{args.step}.json").write_text(text + "\n")
    print(text)
    return 0 if figures.get("passed", True) else 1


if __name__ == "__main__":
    sys.exit(main())
