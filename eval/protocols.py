"""Linear-probe protocols as plain data: the authors' (``paper``) and a quick one for CPUs.

The ``paper`` settings are the FiT3D authors' mmsegmentation / depth-toolbox configs
(``evaluation/configs/vit{s,b}_<dataset>_{sem,depth}_linear_config.py`` in ywyue/FiT3D),
which are DINOv2's linear protocols; ``docs/faithfulness.md`` lists each value with its
source. ``quick`` keeps the heads, features and losses and shortens everything else: square
crops, cached frozen features, no augmentation, a few thousand steps on one device.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

PROTOCOLS = ("quick", "paper")


@dataclass(frozen=True)
class SegProtocol:
    """Semantic segmentation: BN + 1x1 conv on last-block, final-norm features."""

    name: str
    iterations: int
    batch_size: int
    lr: float
    weight_decay: float
    schedule: str  # "poly": (1 - t)^power after a linear warm-up
    power: float
    warmup_iters: int = 0
    warmup_ratio: float = 1.0
    # training views (paper): random rescale of the (long, short) bound, crop, flip, colour
    scale: tuple[int, int] | None = None
    ratio_range: tuple[float, float] = (1.0, 1.0)
    crop: tuple[int, int] | None = None
    cat_max_ratio: float = 1.0
    flip_prob: float = 0.0
    photometric: bool = False
    # testing (paper): resize into ``scale`` keeping the ratio, sliding crops of ``crop``
    slide_stride: tuple[int, int] | None = None
    square: int | None = None  # quick: resize + centre-crop every image to this square


@dataclass(frozen=True)
class DepthProtocol:
    """Depth: last-block features *without* the final norm, the original CLS token
    concatenated, upsampled 4x, 1x1 conv to 256 uniform bins, linear normalisation."""

    name: str
    iterations: int
    batch_size: int
    lr: float
    weight_decay: float
    schedule: str  # "cosine" after a linear warm-up, or "poly"
    power: float = 1.0
    warmup_iters: int = 0
    warmup_ratio: float = 1.0
    min_lr_ratio: float = 0.0
    grad_clip: float | None = None
    one_cycle_momentum: bool = False
    """mmcv's OneCycle momentum: Adam's beta1 0.95 -> 0.85 over the first 30%, then back."""
    sigloss_warmup: int = 100
    images_per_loss: int = 2
    """SigLoss runs over each GPU's 2 images and DDP averages: its variance term sees 2 images
    at a time, whatever the global batch."""
    gradient_weight: float = 0.0
    """The configs say 0.5, but the toolbox's gradient loss is identically zero at 2 images
    per GPU (eval/probe_heads.py), so the authors' probes trained on SigLoss alone."""
    # training views (paper)
    pre_crop: str | None = None  # "nyu" or "kitti": the dataset's fixed crop first
    rotate_prob: float = 0.0
    rotate_degree: float = 0.0
    flip_prob: float = 0.0
    crop: tuple[int, int] | None = None
    color_prob: float = 0.0
    gamma_range: tuple[float, float] = (1.0, 1.0)
    brightness_range: tuple[float, float] = (1.0, 1.0)
    color_range: tuple[float, float] = (1.0, 1.0)
    # testing
    flip_test: bool = False
    eval_crop: str | None = None  # "eigen" (NYU, ScanNet) or "garg" (KITTI)
    square: int | None = None


PAPER_SEG = SegProtocol(
    name="paper", iterations=40_000,
    # 2 images per GPU on 8 GPUs (the paper; the released script launches 4)
    batch_size=16, lr=1e-3, weight_decay=1e-4, schedule="poly", power=1.0,
    warmup_iters=1500, warmup_ratio=1e-6, scale=(2048, 512), ratio_range=(0.5, 2.0),
    crop=(512, 512), cat_max_ratio=0.75, flip_prob=0.5, photometric=True,
    slide_stride=(341, 341),
)

_PAPER_DEPTH = DepthProtocol(
    name="paper", iterations=38_400, batch_size=16, lr=1e-4, weight_decay=0.01,
    schedule="cosine", warmup_iters=12_800, warmup_ratio=1e-3, min_lr_ratio=1e-8,
    grad_clip=35.0, one_cycle_momentum=True, rotate_prob=0.5, rotate_degree=2.5,
    flip_prob=0.5, crop=(416, 544),
    color_prob=0.5, gamma_range=(0.9, 1.1), brightness_range=(0.75, 1.25),
    color_range=(0.9, 1.1), flip_test=True,
)
PAPER_DEPTH = {
    "scannetpp": _PAPER_DEPTH,
    "nyuv2": replace(_PAPER_DEPTH, pre_crop="nyu", eval_crop="eigen"),
    "scannet": replace(_PAPER_DEPTH, eval_crop="eigen"),
    "kitti": replace(_PAPER_DEPTH, pre_crop="kitti", crop=(352, 704),
                     brightness_range=(0.9, 1.1), eval_crop="garg"),
}
"""Per dataset (the configs differ in crops and ranges); others use ScanNet++'s."""


def quick_seg(iterations: int = 2000, batch_size: int = 8, lr: float = 1e-3,
              size: int = 448) -> SegProtocol:
    return SegProtocol(name="quick", iterations=iterations, batch_size=batch_size, lr=lr,
                       weight_decay=1e-4, schedule="poly", power=0.9, square=size)


def quick_depth(iterations: int = 2000, batch_size: int = 8, lr: float = 1e-3,
                size: int = 448) -> DepthProtocol:
    return DepthProtocol(name="quick", iterations=iterations, batch_size=batch_size, lr=lr,
                         weight_decay=1e-4, schedule="poly", power=0.9, square=size)


def paper_protocol(task: str, dataset: str) -> SegProtocol | DepthProtocol:
    return PAPER_SEG if task == "seg" else PAPER_DEPTH.get(dataset, _PAPER_DEPTH)


def lr_at(protocol: SegProtocol | DepthProtocol, step: int) -> float:
    """mmcv's iteration-based schedule with a linear warm-up, at ``step`` (0-based)."""
    total = protocol.iterations
    if protocol.schedule == "poly":
        regular = (protocol.lr * (1 - step / total) ** protocol.power)
    else:  # cosine annealing down to min_lr_ratio * lr
        floor = protocol.lr * protocol.min_lr_ratio
        regular = floor + 0.5 * (protocol.lr - floor) * (1 + _cos(step / total))
    if step < protocol.warmup_iters:
        # mmcv 'linear' warm-up: ratio ramps from warmup_ratio to 1 over warmup_iters
        k = (1 - step / protocol.warmup_iters) * (1 - protocol.warmup_ratio)
        return regular * (1 - k)
    return regular


def beta1_at(protocol: SegProtocol | DepthProtocol, step: int, default: float = 0.9) -> float:
    """Adam's beta1 at ``step``: mmcv's OneCycle momentum (0.95 -> 0.85 -> 0.95, cosine,
    turning at 30% of the run) where the protocol uses it."""
    if not getattr(protocol, "one_cycle_momentum", False):
        return default
    high, low = 0.95, 0.85
    turn = 0.3 * protocol.iterations - 1
    if step <= turn:
        start, end, pct = high, low, step / max(turn, 1e-9)
    else:
        start, end = low, high
        pct = (step - turn) / max(protocol.iterations - 1 - turn, 1e-9)
    return end + (start - end) / 2 * (_cos(min(pct, 1.0)) + 1)


def _cos(t: float) -> float:
    import math

    return math.cos(math.pi * t)
