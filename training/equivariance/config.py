"""The equivariance method's settings: the authors' defaults (3DCorrEnhance ``finetune.py``),
each a flag of ``python -m training.equivariance``."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from fit3d_hub.commandline import option
from fit3d_hub.errors import UsageError
from training.equivariance.loss import NEGATIVE_DISTANCE, POSITIVE_DISTANCE, TEMPERATURE
from training.equivariance.network import FEATURE_STRIDE, TARGET_SIZE
from training.equivariance.pairs import MAX_ROTATION, POINTS_PER_VIEW

MIXED_PRECISION = ("no", "bf16", "fp16")


@dataclass
class EquivarianceConfig:
    """Settings; the defaults are the authors' (3DCorrEnhance ``finetune.py``)."""

    steps: int = option(10_000, help="optimizer steps (the authors' 100 epochs x 100 samples)")
    """Optimizer steps (their 100 epochs x 100 samples)."""
    lr: float = option(1e-5, help="AdamW learning rate")
    weight_decay: float = option(1e-4, help="AdamW weight decay")
    grad_clip: float = option(1.0, help="gradient-norm clip (0: none)")
    rank: int = option(4, help="LoRA rank")
    lora_blocks: int = option(4, help="LoRA on the q and v of the last N blocks")
    target_size: int = option(TARGET_SIZE, help="longer image side before the token grid is "
                              "taken")
    feature_stride: int = option(FEATURE_STRIDE, help="pixels of the target size per token")
    points: int = option(POINTS_PER_VIEW, help="pixels sampled per view")
    max_rotation: float = option(MAX_ROTATION, help="widest relative rotation of a training "
                                 "pair (degrees)")
    positive: float = option(POSITIVE_DISTANCE, help="3D distance below which two points match "
                             "(x scene extent)")
    negative: float = option(NEGATIVE_DISTANCE, help="3D distance above which two points are "
                             "negatives (x scene extent)")
    temperature: float = option(TEMPERATURE, help="smooth-AP sigmoid temperature")
    augment: bool = option(True, help="no geometric/colour augmentation")
    holdout_every: int = option(0, help="also keep every k-th view out of training (test frames "
                                "always are)")
    """Also keep every k-th view out of training (test frames always are)."""
    save_every: int = option(1000, help="checkpoint every N steps (and at the end; 0: never)")
    keep_checkpoints: int = 2
    seed: int = option(42, help="random seed")

    def __post_init__(self) -> None:
        for name in ("steps", "rank", "lora_blocks", "target_size", "feature_stride", "points"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be a positive integer")
        for name in ("lr", "weight_decay", "grad_clip", "holdout_every", "save_every"):
            if not getattr(self, name) >= 0:
                raise UsageError(f"--{name.replace('_', '-')} must be >= 0")
        if not 0 < self.positive < self.negative:
            raise UsageError("expected 0 < --positive < --negative")
        if not self.temperature > 0:
            raise UsageError("--temperature must be > 0")
        if not 0 < self.max_rotation <= 180:
            raise UsageError("--max-rotation must be in (0, 180] degrees")

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class EquivarianceRun:
    """What ``python -m training.equivariance`` runs on, beside the
    :class:`EquivarianceConfig`."""

    scenes: str = option(help="scene folder(s) with depth and poses, or a text file of paths")
    backbone: str = option(help="registry name, hub repo id or directory")
    output: str = option(help="repo directory to write")
    mixed_precision: str = option("no", choices=MIXED_PRECISION, help="Accelerate's mixed "
                                  "precision")
    resume: bool = option(False, help="continue from the last checkpoint")
    overwrite: bool = option(False, help="start over in an --output holding an earlier run's "
                             "checkpoints (they are deleted)")
    cache_dir: str | None = option(None, help="Hugging Face cache for the backbone's weights")
