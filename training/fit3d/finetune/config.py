"""Stage 2 settings: the paper's and the authors' code's defaults, each a flag of
``python -m training.fit3d.finetune``."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from fit3d_hub.commandline import option
from fit3d_hub.errors import UsageError
from fit3d_hub.render.backends import BACKENDS

MIXED_PRECISION = ("no", "bf16", "fp16")


@dataclass
class FinetuneConfig:
    """Stage 2 settings; defaults are the paper's (and the authors' code)."""

    epochs: int = option(1, help="passes over every training view")
    batch_size: int = option(2, help="views per optimizer step and process")
    lr: float = option(1e-5, help="AdamW learning rate")
    weight_decay: float = option(1e-4, help="AdamW weight decay")
    grad_clip: float = option(0.1, help="gradient-norm clip (0: none)")
    grad_accum: int = option(1, help="gradient accumulation steps")
    hflip: bool = option(True, help="no horizontal flips")
    lr_drop: tuple[int, ...] = option(
        (1,), metavar="EPOCH", help="epochs after which the lr drops 10x (the authors'; the flag "
        "with no epoch: never)")
    """Epochs after which the lr is multiplied by 0.1 (the authors' MultiStepLR, milestone 1:
    it only matters for runs longer than the paper's one epoch)."""
    coverage_mask: bool = option(
        False, help="also leave out tokens the Gaussians do not cover (off: the authors weight "
        "the loss by the scene mask only)")
    """Also leave out tokens the Gaussians do not cover (ours; the authors weight by the
    scene mask only)."""
    save_every: int = option(1000, help="checkpoint every N optimizer steps (and at the end; "
                             "0: never)")
    keep_checkpoints: int = 2
    seed: int = option(0, help="random seed")

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be a positive integer")
        if any(e < 1 for e in self.lr_drop):
            raise UsageError("--lr-drop epochs must be positive integers")
        for name in ("lr", "weight_decay", "grad_clip", "save_every"):
            if not getattr(self, name) >= 0:
                raise UsageError(f"--{name.replace('_', '-')} must be >= 0")

    def to_json(self) -> dict:
        return asdict(self)


@dataclass
class FinetuneRun:
    """What ``python -m training.fit3d.finetune`` runs on, beside the :class:`FinetuneConfig`."""

    lifted: str = option(help="Stage 1 output folder")
    backbone: str = option(help="registry name, hub repo id or directory")
    output: str = option(help="repo directory to write")
    scenes: str | None = option(None, help="where the lifted scenes are now, if they moved since "
                                "Stage 1 (none: the folders Stage 1 recorded)")
    mixed_precision: str = option("no", choices=MIXED_PRECISION, help="Accelerate's mixed "
                                  "precision")
    resume: bool = option(False, help="continue from the last checkpoint")
    overwrite: bool = option(False, help="start over in an --output holding an earlier run's "
                             "checkpoints (they are deleted)")
    lazy: bool = option(False, help="load one lifted scene at a time")
    backend: str = option("auto", choices=BACKENDS, help="rasterizer")
    cache_dir: str | None = option(None, help="Hugging Face cache for the backbone's weights")
