"""Lifted scenes for Stage 2, found from Stage 1's record and preloaded once (or one at a time).

Each lifted file's metadata says which scene folder it came from, at which ``--downscale``,
and which views Stage 1 trained on; Stage 2 needs nothing else. ``--scenes`` overrides the
recorded folders (data moved since Stage 1), matched by scene name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from fit3d_hub.errors import FiT3DError
from scenes.holdout import training_views, without_test_frames
from scenes.load import load_scene
from scenes.types import SceneError
from scenes.views import SceneImages, load_views
from training.fit3d.lift.gaussians import FeatureGaussians
from training.fit3d.lift.record import (
    OUTPUT_NAME,
    LiftedMeta,
    LiftedSceneError,
    load_lifted,
    read_meta,
)


class LiftedDataError(FiT3DError, ValueError):
    """Stage 2 input that cannot be used (no lifted scenes, not enough memory, ...)."""


@dataclass(frozen=True)
class LiftedRecord:
    """One finished Stage 1 scene: its lifted file, its metadata and its scene folder."""

    path: Path
    meta: LiftedMeta
    scene_dir: Path

    @property
    def name(self) -> str:
        return self.meta.scene


@dataclass
class LiftedScene:
    """One scene's feature Gaussians and decoder with its views at Stage 1's size."""

    name: str
    gaussians: FeatureGaussians
    meta: LiftedMeta
    views: SceneImages

    @property
    def render_size(self) -> tuple[int, int]:
        """(width, height) of the lifted renders (Stage 1's image size)."""
        return self.views.size


def stage2_views(meta: LiftedMeta) -> list[int]:
    """The views Stage 1 trained on (its record) that are not test frames: the authors'
    Stage 2 only has camera records for ``frames``. A lifted file older than the record
    trains on every view."""
    splits = meta.all_splits
    views = meta.training_views or training_views(splits)
    return without_test_frames(views, splits)


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


def find_lifted(lifted_dir: Path, scenes: list[Path] | None = None) -> list[LiftedRecord]:
    """Every scene Stage 1 finished under ``lifted_dir``, each metadata read once.

    The scene folder is the one Stage 1 recorded, or, with ``scenes``, the folder of that
    name among them (data moved since Stage 1).
    """
    lifted_dir = Path(lifted_dir)
    if not lifted_dir.is_dir():
        raise LiftedDataError(f"{lifted_dir}: no such Stage 1 output folder")
    override = {p.name: p for p in scenes} if scenes is not None else None
    records, unreadable = [], []
    for path in sorted(lifted_dir.glob(f"*/{OUTPUT_NAME}")):
        try:
            meta = read_meta(path)
        except LiftedSceneError as err:
            unreadable.append(str(err))
            continue
        name = meta.scene
        if override is not None:
            if name not in override:
                continue
            scene_dir = override[name]
        elif meta.scene_path:
            scene_dir = Path(meta.scene_path)
        else:
            raise LiftedDataError(f"{path}: records no scene_path (an older Stage 1 file); "
                                  "pass --scenes")
        records.append(LiftedRecord(path, meta, scene_dir))
    if unreadable:
        print(f"note: {len(unreadable)} lifted file(s) left out: {unreadable[0]}"
              f"{' ...' if len(unreadable) > 1 else ''}")
    if not records:
        what = f"for any of the {len(scenes)} --scenes" if scenes is not None else ""
        raise LiftedDataError(f"{lifted_dir}: no finished Stage 1 scene {what}".rstrip()
                              + "; run training.fit3d.lift first")
    if override is not None and len(records) < len(override):
        missing = sorted(set(override) - {r.name for r in records})
        print(f"note: {len(missing)} scene(s) without Stage 1 output are left out: "
              f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    return records


def estimate_bytes(records: list[LiftedRecord]) -> int:
    """Memory the preloaded scenes take: the lifted tensors plus uint8 images and masks."""
    total = 0
    for record in records:
        width, height = record.meta.image_size
        total += record.path.stat().st_size + record.meta.views * width * height * 4
    return total


def check_memory(records: list[LiftedRecord], fraction: float = 0.8) -> int:
    """Raise before any work when preloading would not fit; returns the estimate."""
    need, have = estimate_bytes(records), available_memory()
    if need > fraction * have:
        raise LiftedDataError(
            f"preloading {len(records)} lifted scenes needs ~{need / 2**30:.1f} GiB but only "
            f"{have / 2**30:.1f} GiB are available; pass --lazy to load one scene at a time")
    return need


def load_lifted_scene(record: LiftedRecord) -> LiftedScene:
    """The Gaussians and the scene's views as Stage 1 saw them (the same loader)."""
    gaussians, meta = load_lifted(record.path)
    try:
        scene = load_scene(record.scene_dir)
    except SceneError as err:
        raise LiftedDataError(f"{record.path}: its scene {record.scene_dir} cannot be read "
                              f"({err}); pass --scenes if it moved") from None
    if len(scene.frames) != meta.views:
        raise LiftedDataError(f"{record.path}: lifted from {meta.views} views but "
                              f"{record.scene_dir} has {len(scene.frames)}; re-run "
                              "training.fit3d.lift")
    gaussians.requires_grad_(False)
    return LiftedScene(scene.name, gaussians, meta,
                       load_views(scene, meta.downscale))


class LiftedStore:
    """All lifted scenes, preloaded once; with ``lazy`` only the last one used stays loaded."""

    def __init__(self, records: list[LiftedRecord], lazy: bool = False):
        self.records = records
        self.lazy = lazy
        self.names = [r.name for r in records]
        self.metas = [r.meta for r in records]
        self.views = [m.views for m in self.metas]
        self._cache: dict[int, LiftedScene] = {}
        if not lazy:
            for i in range(len(records)):
                self._cache[i] = load_lifted_scene(records[i])

    def __len__(self) -> int:
        return len(self.records)

    def training_views(self) -> list[list[int]]:
        return [stage2_views(meta) for meta in self.metas]

    def scene(self, index: int) -> LiftedScene:
        if index not in self._cache:
            if self.lazy:
                self._cache.clear()
            self._cache[index] = load_lifted_scene(self.records[index])
        return self._cache[index]
