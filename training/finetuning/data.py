"""Lifted scenes for Stage 2: everything preloaded into CPU memory once (or one at a time)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from training.data.scene import Scene, load_image, load_mask, load_scene, training_views
from training.lifting.gaussians import FeatureGaussians
from training.lifting.io import LiftedSceneError, load_lifted, output_path, read_meta


class LiftedDataError(ValueError):
    """Stage 2 input that cannot be used (no lifted scenes, not enough memory, ...)."""


@dataclass
class LiftedScene:
    """One scene's feature Gaussians, decoder, cameras, images and masks (uint8 / bool, CPU),
    all at Stage 1's size (the stored size divided by its ``--downscale``)."""

    name: str
    gaussians: FeatureGaussians
    meta: dict
    viewmats: torch.Tensor  # (V, 4, 4) OpenCV world-to-camera
    Ks: torch.Tensor  # (V, 3, 3)
    images: torch.Tensor  # (V, H, W, 3) uint8
    masks: torch.Tensor | None  # (V, H, W) bool: True = pixel kept

    @property
    def num_views(self) -> int:
        return int(self.viewmats.shape[0])

    @property
    def render_size(self) -> tuple[int, int]:
        """(width, height) of the lifted renders (Stage 1's image size)."""
        width, height = self.meta["image_size"]
        return int(width), int(height)


def stage2_views(meta: dict, holdout_every: int = 0) -> list[int]:
    """The views Stage 1 trained on (its record) that are not test frames: the authors'
    Stage 2 only has camera records for ``frames``. ``holdout_every`` applies only to lifted
    files written before the record existed."""
    splits = meta.get("splits") or ["train"] * meta["views"]
    views = meta.get("training_views") or training_views(splits, holdout_every)
    return [v for v in views if splits[v] != "test"]


def available_memory() -> int:
    """Bytes of memory available for new allocations (MemAvailable on Linux)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def pair_scenes(lifted_dir: Path, scenes: list[Path]) -> list[tuple[Path, Path]]:
    """(lifted file, scene folder) for every scene that Stage 1 finished."""
    pairs, missing = [], []
    for scene in scenes:
        path = output_path(lifted_dir, scene.name)
        try:
            read_meta(path)
        except LiftedSceneError:
            missing.append(scene.name)
            continue
        pairs.append((path, scene))
    if not pairs:
        raise LiftedDataError(f"{lifted_dir}: no lifted scene for any of the {len(scenes)} "
                              "scenes; run training.lift first")
    if missing:
        print(f"note: {len(missing)} scene(s) without Stage 1 output are left out: "
              f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    return pairs


def estimate_bytes(pairs: list[tuple[Path, Path]]) -> int:
    """Memory the preloaded scenes take: the lifted tensors plus uint8 images and masks."""
    total = 0
    for lifted, _ in pairs:
        meta = read_meta(lifted)
        width, height = meta["image_size"]
        total += lifted.stat().st_size + meta["views"] * width * height * 4
    return total


def check_memory(pairs: list[tuple[Path, Path]], fraction: float = 0.8) -> int:
    """Raise before any work when preloading would not fit; returns the estimate."""
    need, have = estimate_bytes(pairs), available_memory()
    if need > fraction * have:
        raise LiftedDataError(
            f"preloading {len(pairs)} lifted scenes needs ~{need / 2**30:.1f} GiB but only "
            f"{have / 2**30:.1f} GiB are available; pass --lazy to load one scene at a time")
    return need


def load_lifted_scene(lifted: Path, scene_dir: Path) -> LiftedScene:
    gaussians, meta = load_lifted(lifted)
    scene: Scene = load_scene(scene_dir)
    if len(scene.frames) != meta["views"]:
        raise LiftedDataError(f"{lifted}: lifted from {meta['views']} views but {scene_dir} "
                              f"has {len(scene.frames)}; re-run training.lift")
    cams = [f.camera.scaled(meta.get("downscale", 1.0)) for f in scene.frames]
    size = (cams[0].width, cams[0].height)
    images = np.stack([load_image(f.image_path, size) for f in scene.frames])
    masks = None
    if any(f.mask_path for f in scene.frames):
        masks = torch.from_numpy(np.stack([
            load_mask(f.mask_path, size) if f.mask_path else np.ones(size[::-1], bool)
            for f in scene.frames]))
    gaussians.requires_grad_(False)
    return LiftedScene(scene.name, gaussians, meta,
                       torch.tensor(np.stack([c.w2c for c in cams]), dtype=torch.float32),
                       torch.tensor(np.stack([c.K for c in cams]), dtype=torch.float32),
                       torch.from_numpy(images), masks)


class LiftedStore:
    """All lifted scenes, preloaded once; with ``lazy`` only the last one used stays loaded."""

    def __init__(self, pairs: list[tuple[Path, Path]], lazy: bool = False):
        self.pairs = pairs
        self.lazy = lazy
        self.names = [scene.name for _, scene in pairs]
        self.metas = [read_meta(lifted) for lifted, _ in pairs]
        self.views = [meta["views"] for meta in self.metas]
        self._cache: dict[int, LiftedScene] = {}
        if not lazy:
            for i in range(len(pairs)):
                self._cache[i] = load_lifted_scene(*pairs[i])

    def __len__(self) -> int:
        return len(self.pairs)

    def training_views(self, holdout_every: int = 0) -> list[list[int]]:
        return [stage2_views(meta, holdout_every) for meta in self.metas]

    def scene(self, index: int) -> LiftedScene:
        if index not in self._cache:
            if self.lazy:
                self._cache.clear()
            self._cache[index] = load_lifted_scene(*self.pairs[index])
        return self._cache[index]
