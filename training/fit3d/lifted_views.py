"""How well a lifted scene (Stage 1's or the feed-forward lifter's: one file format) predicts
views: RGB PSNR and decoded-feature L1 against the teacher, beside the L1 of the best constant
feature, rendered and measured by the same code whichever lifter made the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fit3d_hub import FiT3D
from scenes.load import load_scene
from scenes.views import load_views
from training.fit3d.lift.config import LiftConfig
from training.fit3d.lift.record import load_lifted
from training.fit3d.lift.teacher import compute_teacher_features, upsample_teacher
from training.fit3d.lift.trainer import SceneViews, evaluate


@torch.no_grad()
def lifted_view_metrics(lifted_file: str | Path, teacher: FiT3D, views: list[int],
                        backend: str = "torch") -> dict[str, float]:
    """PSNR, feature L1 and the constant-feature L1 (the teacher's mean feature over the
    views the lifter trained on, as ``benchmarks/lift_settings.py``) at ``views`` of the
    scene a lifted file was made from; ``relative_l1`` is their ratio (below 1: the renders
    say more than a constant)."""
    gaussians, meta = load_lifted(lifted_file)
    scene = load_scene(meta.scene_path)
    images = load_views(scene, meta.downscale)
    feats = compute_teacher_features(teacher, images.images)
    scene_views = SceneViews.from_images(images, feats, torch.device("cpu"))
    out = evaluate(gaussians, scene_views, backend, LiftConfig(sh_degree=meta.sh_degree or 0),
                   views)
    seen = meta.training_views or list(range(len(feats)))
    mean = feats[seen].float().mean((0, 2, 3))[None, :, None, None]
    const = [float((upsample_teacher(feats[v:v + 1], scene_views.height, scene_views.width)
                    - mean).abs().mean()) for v in views]
    out["constant_feature_l1"] = float(np.mean(const))
    out["relative_l1"] = out["feature_l1"] / max(out["constant_feature_l1"], 1e-12)
    return out
