"""Feed-forward lifter settings: each a flag of ``python -m training.fit3d.feedforward``
(training) or ``python -m training.fit3d.feedforward.lift`` (lifting scenes with a trained
lifter). Where LSM and MVSplat/Splat-and-Distill differ, the comment says whose value it is."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from fit3d_hub.commandline import option
from fit3d_hub.errors import UsageError
from fit3d_hub.render.backends import BACKENDS

MIXED_PRECISION = ("no", "bf16", "fp16")
DEPTH_SOURCES = ("sensor", "predicted")


@dataclass
class FeedForwardConfig:
    """The lifter's shape and its training schedule."""

    depth: str = option("sensor", choices=DEPTH_SOURCES, help="where each Gaussian's depth "
                        "comes from: the scene's depth maps, or a plane-sweep cost volume over "
                        "the other context views (MVSplat's)")
    context_views: int = option(2, help="context views per training sample (LSM and MVSplat: 2)")
    target_views: int = option(1, help="target views rendered per sample (LSM and MVSplat: 1)")
    stride: int = option(2, help="one Gaussian per stride x stride pixels (LSM and MVSplat: 1)")
    feature_dim: int = option(64, help="feature channels per Gaussian (LSM: 64; FiT3D: 64)")
    width: int = option(32, help="channels of the lifter's convolutions")
    depth_candidates: int = option(32, help="depth planes of the cost volume (MVSplat: 128)")
    near: float = option(0.5, help="nearest depth candidate, metres")
    far: float = option(20.0, help="farthest depth candidate, metres")
    steps: int = option(2000, help="optimizer steps")
    lr: float = option(1e-4, help="peak AdamW learning rate (LSM: 1e-4)")
    min_lr: float = 1e-6
    warmup_steps: int = option(100, help="linear warm-up steps before the cosine decay")
    weight_decay: float = 0.05
    feature_weight: float = option(1.0, help="weight of the feature L1 beside the RGB loss")
    ssim_weight: float = 0.2
    grad_clip: float = option(1.0, help="gradient-norm clip (0: none)")
    grad_accum: int = option(1, help="micro-batches (one scene each) per optimizer step")
    downscale: float = option(1.0, help="treat the images as downscaled by this factor")
    holdout_every: int = option(0, help="hold out every k-th view of each scene (0: none)")
    holdout_scenes: int = option(0, help="keep the last N scenes (sorted) out of training; "
                                 "they are measured at the end")
    save_every: int = option(500, help="checkpoint every N optimizer steps (and at the end; 0: "
                             "only at the end)")
    keep_checkpoints: int = 2
    seed: int = option(0, help="random seed")

    def __post_init__(self) -> None:
        for flag, value, low in (("--context-views", self.context_views, 1),
                                 ("--target-views", self.target_views, 1),
                                 ("--stride", self.stride, 1),
                                 ("--feature-dim", self.feature_dim, 1),
                                 ("--width", self.width, 1),
                                 ("--depth-candidates", self.depth_candidates, 2),
                                 ("--steps", self.steps, 1), ("--grad-accum", self.grad_accum, 1),
                                 ("--holdout-every", self.holdout_every, 0),
                                 ("--holdout-scenes", self.holdout_scenes, 0),
                                 ("--save-every", self.save_every, 0),
                                 ("--warmup-steps", self.warmup_steps, 0)):
            if value < low:
                raise UsageError(f"{flag} must be at least {low}; got {value}")
        if self.depth == "predicted" and self.context_views < 2:
            raise UsageError("--depth predicted needs --context-views of at least 2 (the cost "
                             "volume compares views)")
        if not 0 < self.near < self.far:
            raise UsageError(f"--near and --far must satisfy 0 < near < far; got {self.near}, "
                             f"{self.far}")
        for flag, value in (("--lr", self.lr), ("--feature-weight", self.feature_weight)):
            if not value > 0:
                raise UsageError(f"{flag} must be a positive number; got {value}")
        if not self.downscale >= 1.0:
            raise UsageError(f"--downscale must be >= 1; got {self.downscale}")

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class FeedForwardRun:
    """What ``python -m training.fit3d.feedforward`` trains on, beside the config."""

    scenes: str = option(help="a folder of scene folders, one scene folder, or a text file of "
                         "paths")
    backbone: str = option(help="registry name, hub repo id or directory: its original branch "
                           "is the teacher")
    output: str = option(help="output folder: the trained lifter (and checkpoints/)")
    backend: str = option("auto", choices=BACKENDS, help="rasterizer")
    mixed_precision: str = option("no", choices=MIXED_PRECISION, help="Accelerate's mixed "
                                  "precision")
    resume: bool = option(False, help="continue from the last checkpoint")
    overwrite: bool = option(False, help="start over in an --output holding an earlier run's "
                             "checkpoints (they are deleted)")
    cache_dir: str | None = option(None, help="Hugging Face cache for the backbone's weights")


@dataclass
class LiftRun:
    """What ``python -m training.fit3d.feedforward.lift`` runs: a trained lifter over scenes,
    writing Stage 1's lifted-file format."""

    model: str = option(help="the trained lifter's folder")
    scenes: str = option(help="a folder of scene folders, one scene folder, or a text file of "
                         "paths")
    output: str = option(help="output folder (one subfolder per scene, as Stage 1 writes)")
    backbone: str | None = option(None, help="the teacher (default: the one the lifter was "
                                  "trained with)")
    max_context: int = option(16, help="at most this many training views (evenly spaced) "
                              "become context views")
    holdout_every: int = option(0, help="hold out every k-th view (as Stage 1's flag; Stage 2 "
                                "trains on the rest)")
    backend: str = option("auto", choices=BACKENDS, help="rasterizer")
    cache_dir: str | None = option(None, help="Hugging Face cache for the backbone's weights")

    def __post_init__(self) -> None:
        if self.max_context < 1:
            raise UsageError(f"--max-context must be at least 1; got {self.max_context}")
        if self.holdout_every < 0:
            raise UsageError(f"--holdout-every must be >= 0; got {self.holdout_every}")
