"""GMAE against pixel-MAE on synthetic images, offline, on CPU
(``fit3d-hub demo --method gmae``).

Synthetic scenes (objects in a room, with true depth and per-pixel labels) -> a tiny GMAE and
a tiny pixel-MAE trained on the same images with the same budget -> on views of a scene
neither saw: reconstruction PSNR on the masked patches, edge F-score (ODS) of GMAE's depth
edges against the true label boundaries beside Sobel on the image and on pixel-MAE's
reconstruction, and a linear probe on each encoder's patch features (and a random encoder's);
pictures of GMAE's depth-ordered layers, depth, figure-ground mask and edges.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from eval.gmae import (
    edge_ods,
    label_boundaries,
    linear_probe_accuracy,
    masked_psnr,
    patch_features,
    patch_labels,
    reconstruct,
    sobel,
)
from fit3d_hub import load_fit3d
from fit3d_hub.atomic import save_image_atomic
from fit3d_hub.gmae import depth_layers, depth_maps, image_gaussians, patchify
from fit3d_hub.pca import side_by_side, stacked
from fit3d_hub.registry import IMAGENET_MEAN, IMAGENET_STD
from fit3d_hub.transforms import normalize
from scenes.io import load_rgb
from scenes.load import load_scene
from scenes.synthetic import generate
from training.gmae.config import GmaeConfig, GmaeRun
from training.gmae.run import build_model, run_gmae


@dataclass
class Settings:
    """A CPU-sized run: tiny encoder and decoder, 32 px crops."""

    train_scenes: int = 3
    test_scenes: int = 1
    views: int = 12
    size: int = 64
    image_size: int = 32
    epochs: int = 40
    batch_size: int = 8
    num_gaussians: int = 128
    seed: int = 0
    backbone: str | None = None
    """A timm ViT architecture for the encoder (None: a tiny one, patch 8, width 64)."""
    timings: dict[str, float] = field(default_factory=dict)

    def config(self, decoder: str) -> GmaeConfig:
        tiny = {} if self.backbone else {"embed_dim": 64, "depth": 4, "num_heads": 4,
                                         "patch_size": 8}
        return GmaeConfig(architecture=self.backbone or "vit_small_patch16_224", **tiny,
                          image_size=self.image_size, decoder=decoder,
                          num_gaussians=self.num_gaussians, decoder_dim=64, decoder_depth=2,
                          decoder_heads=4, epochs=self.epochs, warmup_epochs=1,
                          batch_size=self.batch_size, base_lr=0.03, crop_scale=0.35,
                          save_every=0, seed=self.seed)


def quick(settings: Settings) -> Settings:
    """Fewer epochs (``--quick``: a smoke test)."""
    return replace(settings, epochs=3)


def _views(scene_dirs: list[Path], side: int) -> dict[str, torch.Tensor]:
    """The scenes' views at ``side`` x ``side`` (centre crops): normalised images, [0, 1]
    targets and labels."""
    images, labels = [], []
    for scene_dir in scene_dirs:
        for frame in load_scene(scene_dir).frames:
            rgb = torch.from_numpy(load_rgb(frame.image_path)).permute(2, 0, 1)
            label = torch.from_numpy(np.asarray(Image.open(frame.label_path), dtype=np.int64))
            crop = min(rgb.shape[-2:])
            top, left = (rgb.shape[1] - crop) // 2, (rgb.shape[2] - crop) // 2
            rgb = rgb[:, top:top + crop, left:left + crop]
            label = label[top:top + crop, left:left + crop]
            images.append(F.interpolate(rgb[None], size=(side, side), mode="bilinear",
                                        antialias=True, align_corners=False)[0])
            labels.append(F.interpolate(label[None, None].float(), size=(side, side),
                                        mode="nearest")[0, 0].long())
    target = torch.stack(images).clamp(0, 1)
    return {"target": target, "images": normalize(target, IMAGENET_MEAN, IMAGENET_STD),
            "labels": torch.stack(labels)}


def run(output: str | Path, settings: Settings | None = None,
        log: Callable[[str], None] = print) -> dict:
    """Train both, evaluate on an unseen scene, write the pictures; returns the table."""
    s = settings or Settings()
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    times = s.timings
    t = time.perf_counter()
    train_dirs = generate(output / "scenes" / "train", scenes=s.train_scenes, views=s.views,
                          size=s.size, seed=s.seed)
    test_dirs = generate(output / "scenes" / "test", scenes=s.test_scenes, views=s.views,
                         size=s.size, seed=s.seed + 100)
    folder = output / "images"
    shutil.rmtree(folder, ignore_errors=True)
    for scene_dir in train_dirs:  # an image folder of the training views' RGB alone
        for frame in load_scene(scene_dir).frames:
            target = folder / scene_dir.name / frame.image_path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(frame.image_path, target)
    times["data"] = time.perf_counter() - t
    log(f"[1/3] {len(train_dirs)} training and {len(test_dirs)} unseen scene(s), {s.views} "
        f"views each ({times['data']:.1f} s)")

    models = {}
    for decoder in ("gaussians", "pixels"):
        t = time.perf_counter()
        repo = output / ("gmae" if decoder == "gaussians" else "mae")
        run_gmae(GmaeRun(images=str(folder), output=str(repo), workers=0, backend="torch"),
                 s.config(decoder), progress=False, log=lambda _: None)
        models[decoder] = load_fit3d(repo)
        times[f"train {decoder}"] = time.perf_counter() - t
    log(f"[2/3] trained GMAE ({times['train gaussians']:.1f} s) and pixel-MAE "
        f"({times['train pixels']:.1f} s), {s.epochs} epochs each")

    t = time.perf_counter()
    test = _views(test_dirs, s.image_size)
    train = _views(train_dirs, s.image_size)
    random_encoder = build_model(s.config("gaussians")).encoder.eval()
    gmae, mae = models["gaussians"], models["pixels"]
    patch = int(gmae.finetuned.patch_embed.patch_size[0])
    truth = patchify(test["target"], patch)
    rows = {}
    for name, model in (("GMAE", gmae), ("pixel-MAE", mae)):
        pred, mask = reconstruct(model.finetuned, model.decoder, test["images"], test["target"],
                                 0.75, s.seed, model.fit3d_block.gmae.scale_factor)
        rows[name] = {"masked PSNR (dB)": masked_psnr(pred, truth, mask)}
    boundaries = label_boundaries(test["labels"])
    with torch.no_grad():
        gaussians = image_gaussians(gmae, test["images"])
        maps = depth_maps(gaussians, s.image_size, s.image_size, "torch")
        full, _ = reconstruct(mae.finetuned, mae.decoder, test["images"], test["target"],
                              1e-6, s.seed)
    side = s.image_size
    mae_image = full.reshape(len(full), side // patch, side // patch, patch, patch, 3) \
        .permute(0, 5, 1, 3, 2, 4).reshape(len(full), 3, side, side)
    rows["GMAE"]["edge ODS"] = edge_ods(maps["edges"], boundaries)
    rows["pixel-MAE"]["edge ODS"] = edge_ods(sobel(mae_image), boundaries)
    rows["Sobel on the image"] = {"edge ODS": edge_ods(sobel(test["target"]), boundaries)}
    train_y = patch_labels(train["labels"], patch)
    test_y = patch_labels(test["labels"], patch)
    for name, encoder in (("GMAE", gmae.finetuned), ("pixel-MAE", mae.finetuned),
                          ("random encoder", random_encoder)):
        acc = linear_probe_accuracy(patch_features(encoder, train["images"]), train_y,
                                    patch_features(encoder, test["images"]), test_y)
        rows.setdefault(name, {})["patch-label probe acc"] = acc
    pictures = _pictures(gaussians, maps, test["target"], output / "layers.png", side)
    times["evaluate"] = time.perf_counter() - t
    log(f"[3/3] evaluated {len(test['images'])} views of the unseen scene(s) "
        f"({times['evaluate']:.1f} s)")
    log("")
    log(table(rows))
    log("time per stage: " + ", ".join(f"{k} {v:.1f} s" for k, v in times.items()))
    log(f"pictures: {pictures}")
    return {"results": rows, "times": dict(times), "pictures": str(pictures)}


def table(rows: dict[str, dict[str, float]]) -> str:
    columns = ["masked PSNR (dB)", "edge ODS", "patch-label probe acc"]
    lines = ["| | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for name, values in rows.items():
        cells = [f"{values[c]:.3f}" if c in values else "-" for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _pictures(gaussians, maps: dict, target: torch.Tensor, path: Path, side: int) -> Path:
    """layers.png: per view, the input, the depth-ordered layers, depth, figure-ground and
    edges."""
    def rgb(t: torch.Tensor) -> np.ndarray:
        t = t.expand(3, -1, -1) if t.shape[0] == 1 else t
        return (t.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()

    layers = depth_layers(gaussians, side, side, 4, "torch")
    depth = maps["depth"]
    depth = (depth - depth.amin(dim=(1, 2, 3), keepdim=True)) / \
        (depth.amax(dim=(1, 2, 3), keepdim=True) - depth.amin(dim=(1, 2, 3), keepdim=True)
         ).clamp_min(1e-6)
    rows = []
    for i in range(min(3, len(target))):
        panels = [("input", rgb(target[i]))]
        panels += [(f"nearest {j + 1}/4", rgb(layer[i])) for j, layer in enumerate(layers)]
        panels += [("depth", rgb(depth[i])), ("figure", rgb(maps["foreground"][i])),
                   ("edges", rgb(maps["edges"][i]))]
        rows.append(side_by_side(panels, 96))
    return save_image_atomic(path, stacked(rows))
