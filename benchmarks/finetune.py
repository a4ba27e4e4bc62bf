"""Stage 2 step time, split into target rendering, backbone forward/backward and optimizer.

One run, the parts timed side by side in every step (medians). A synthetic scene's
Gaussians stand in for a lifted scene (rendering cost depends on their number and the image
size, not on how well they were fitted). On CUDA the backbone runs in bf16 autocast and the
script projects the paper's epoch (140,451 views, batch 2) on this device.

    python benchmarks/finetune.py [--backbone dinov2_small] [--size 224] [--gaussians 20000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fit3d_hub import get_transform, load_fit3d  # noqa: E402
from fit3d_hub.render.backends import resolve_backend  # noqa: E402
from scenes.load import load_scene  # noqa: E402
from scenes.synthetic import generate  # noqa: E402
from training.fit3d.finetune.data import find_lifted, load_lifted_scene  # noqa: E402
from training.fit3d.finetune.targets import make_sample, masked_l1  # noqa: E402
from training.fit3d.finetune.trainer import PatchFeatures  # noqa: E402
from training.fit3d.lift.gaussians import FeatureGaussians  # noqa: E402
from training.fit3d.lift.record import LiftedMeta, output_path, save_lifted  # noqa: E402

PAPER_VIEWS = 140_451


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="dinov2_small")
    parser.add_argument("--size", type=int, default=224, help="view width (height 3/4)")
    parser.add_argument("--gaussians", type=int, default=20_000)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=2)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backend = resolve_backend("auto")
    teacher = load_fit3d(args.backbone, pretrained=False, mode="original")
    vit = teacher.original.to(device).train()
    with tempfile.TemporaryDirectory() as tmp:
        scene_dir = generate(Path(tmp) / "scenes", scenes=1, views=8, size=args.size, seed=0,
                             points=args.gaussians)[0]
        scene = load_scene(scene_dir)
        g = FeatureGaussians.initialise(scene, feature_dim=64, teacher_dim=vit.embed_dim,
                                        sh_degree=3, max_points=args.gaussians)
        cam = scene.frames[0].camera
        save_lifted(output_path(tmp, scene.name), g,
                    LiftedMeta(scene.name, len(scene.frames), (cam.width, cam.height),
                               scene_path=str(scene_dir)))
        lifted = load_lifted_scene(find_lifted(Path(tmp))[0])
    model = PatchFeatures(vit)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=1e-4)
    transform = get_transform(teacher)
    parts = {"render targets": [], "forward + backward": [], "optimizer": []}
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else \
        torch.autocast("cpu", enabled=False)
    for step in range(args.steps + 2):
        _sync(device)
        t0 = time.perf_counter()
        samples = [make_sample(lifted, (step * args.batch_size + i) % len(scene.frames),
                               i % 2 == 0, transform, backend, device)
                   for i in range(args.batch_size)]
        images = torch.stack([s.image for s in samples])
        targets = torch.stack([s.target for s in samples])
        masks = torch.stack([s.mask for s in samples])
        _sync(device)
        t1 = time.perf_counter()
        with autocast:
            pred = model(images)
        loss = masked_l1(pred.float(), targets, masks)
        loss.backward()
        _sync(device)
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        t3 = time.perf_counter()
        if step >= 2:  # warm-up
            for name, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2), strict=True):
                parts[name].append(dt)
    med = {k: statistics.median(v) for k, v in parts.items()}
    total = sum(med.values())
    name = torch.cuda.get_device_name() if device.type == "cuda" else \
        f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; backend {backend}; backbone {args.backbone} (random weights); "
          f"{cam.width}x{cam.height} views, {args.gaussians} Gaussians, batch {args.batch_size}"
          f"{', bf16 autocast' if device.type == 'cuda' else ', fp32'}")
    for k, v in med.items():
        print(f"  {k:20s} {v * 1e3:9.1f} ms  {v / total:6.1%}")
    print(f"  {'step':20s} {total * 1e3:9.1f} ms")
    hours = total * PAPER_VIEWS / args.batch_size / 3600
    print(f"paper's epoch ({PAPER_VIEWS:,} views) at this step time: {hours:.1f} h "
          f"(goal on one H100: <= 3 h; paper: 8.5 h on an A100)")


if __name__ == "__main__":
    main()
