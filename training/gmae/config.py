"""GMAE settings: the authors' (``tekotan/video-gmae`` at 0184262: ``scripts/launch_gmae.sh``
where it sets a value, else ``configs/gmae.yaml``, else the constructor), each a flag of
``python -m training.gmae``."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from fit3d_hub.commandline import option
from fit3d_hub.errors import UsageError
from fit3d_hub.render.backends import BACKENDS

DECODERS = ("gaussians", "pixels")
MIXED_PRECISION = ("no", "bf16", "fp16")


@dataclass
class GmaeConfig:
    """What shapes the result."""

    architecture: str = option("vit_base_patch16_224", help="timm ViT of the encoder (MAE's "
                               "ViT-B/16)")
    embed_dim: int | None = option(None, help="encoder width (none: the architecture's)")
    depth: int | None = option(None, help="encoder blocks (none: the architecture's)")
    num_heads: int | None = option(None, help="encoder heads (none: the architecture's)")
    patch_size: int | None = option(None, help="encoder patch (none: the architecture's)")
    image_size: int = option(224, help="square training crops (the launch script's)")
    decoder: str = option("gaussians", choices=DECODERS, help="gaussians (GMAE) or pixels "
                          "(MAE with norm_pix_loss: the baseline)")
    num_gaussians: int = option(256, help="k, Gaussians per image (the launch script leaves "
                                "their yaml's vocab_size 256; the constructor's default is "
                                "1000)")
    decoder_dim: int = option(512, help="decoder width")
    decoder_depth: int = option(8, help="decoder blocks")
    decoder_heads: int = option(16, help="decoder heads")
    scale_factor: float = option(1.0, help="c, the largest Gaussian scale (c * sigmoid)")
    mask_ratio: float = option(0.75, help="fraction of patches hidden from the encoder")
    epochs: int = option(400, help="passes over the images")
    warmup_epochs: int = option(5, help="epochs of linear warm-up before the cosine decay")
    batch_size: int = option(16, help="images per process and micro-batch")
    base_lr: float = option(1e-4, help="learning rate per 256 images of global batch")
    weight_decay: float = option(0.05, help="AdamW weight decay (not on biases and norms)")
    grad_clip: float = option(2.0, help="gradient-norm clip (0: none)")
    grad_accum: int = option(1, help="gradient accumulation steps")
    crop_scale: float = option(0.08, help="smallest area fraction of the random resized crop "
                               "(torchvision's default, which the authors keep)")
    save_every: int = option(1000, help="checkpoint every N optimizer steps (and at the end; "
                             "0: never)")
    keep_checkpoints: int = 2
    seed: int = option(0, help="random seed")

    def __post_init__(self) -> None:
        if not 0 < self.mask_ratio < 1:
            raise UsageError(f"--mask-ratio must be in (0, 1); got {self.mask_ratio}")
        if self.num_gaussians < 1:
            raise UsageError(f"--num-gaussians must be >= 1; got {self.num_gaussians}")
        for name in ("image_size", "decoder_dim", "decoder_depth", "decoder_heads", "epochs",
                     "batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be a positive integer")
        for name in ("embed_dim", "depth", "num_heads", "patch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be a positive integer")
        for name in ("base_lr", "weight_decay", "grad_clip", "warmup_epochs", "save_every"):
            if not getattr(self, name) >= 0:
                raise UsageError(f"--{name.replace('_', '-')} must be >= 0")
        if not 0 < self.crop_scale <= 1:
            raise UsageError(f"--crop-scale must be in (0, 1]; got {self.crop_scale}")
        if not self.scale_factor > 0:
            raise UsageError(f"--scale-factor must be > 0; got {self.scale_factor}")
        if self.decoder_dim % 4:
            raise UsageError("--decoder-dim must be a multiple of 4 (its sine-cosine position "
                             "code)")

    def to_json(self) -> dict:
        return asdict(self)

    def model_args(self) -> dict:
        """timm constructor arguments of the encoder."""
        args = {"img_size": self.image_size}
        for key in ("embed_dim", "depth", "num_heads", "patch_size"):
            if getattr(self, key) is not None:
                args[key] = getattr(self, key)
        return args


@dataclass
class GmaeRun:
    """What ``python -m training.gmae`` reads and writes, beside the :class:`GmaeConfig`."""

    images: str = option(help="an image folder (files anywhere below it), or hf:NAME[:SPLIT] "
                         "for a Hugging Face dataset with an 'image' column")
    output: str = option(help="repo directory to write")
    mixed_precision: str = option("no", choices=MIXED_PRECISION, help="Accelerate's mixed "
                                  "precision (the authors train in fp32)")
    resume: bool = option(False, help="continue from the last checkpoint")
    overwrite: bool = option(False, help="start over in an --output holding an earlier run's "
                             "checkpoints (they are deleted)")
    backend: str = option("auto", choices=BACKENDS, help="rasterizer")
    workers: int = option(4, help="DataLoader worker processes decoding and augmenting")
    skip_unreadable: bool = option(False, help="skip unreadable or truncated images (counted) "
                                   "instead of stopping at the first")
    max_pixels: int = option(64_000_000, help="refuse an image with more pixels than this "
                             "before decoding it (a decompression bomb)")
    cache_dir: str | None = option(None, help="Hugging Face cache (hf: datasets)")

    def __post_init__(self) -> None:
        if self.workers < 0:
            raise UsageError(f"--workers must be >= 0; got {self.workers}")
        if self.max_pixels < 1:
            raise UsageError(f"--max-pixels must be positive; got {self.max_pixels}")
