"""The paper protocol's training views and evaluation crops, as pure functions.

Each follows the mmsegmentation / depth-toolbox transform the authors' configs name
(``Resize`` with a ratio range, ``RandomCrop`` with ``cat_max_ratio``, ``RandomFlip``,
``PhotoMetricDistortion``, ``Pad``; ``NYUCrop``, ``KBCrop``, ``RandomRotate``, ``ColorAug``;
the eigen and Garg evaluation crops). Images are (H, W, 3) float32 arrays in 0..255, labels
(H, W) int64 with 255 ignored, depth (H, W) float32 metres with 0 unknown; randomness comes
from the ``numpy.random.Generator`` passed in.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from eval.datasets import IGNORE
from eval.protocols import DepthProtocol, SegProtocol

NYU_CROP = (slice(45, 472), slice(43, 608))
KITTI_CROP = (352, 1216)


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear (half-pixel centres, no antialiasing: OpenCV's INTER_LINEAR) to (h, w)."""
    if image.shape[:2] == tuple(size):
        return image
    t = torch.from_numpy(np.ascontiguousarray(image, np.float32)).permute(2, 0, 1)[None]
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False)[0] \
        .permute(1, 2, 0).numpy()


def resize_nearest(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label or depth map to (h, w)."""
    if array.shape[:2] == tuple(size):
        return array
    rows = np.minimum((np.arange(size[0]) + 0.5) * array.shape[0] / size[0],
                      array.shape[0] - 1).astype(int)
    cols = np.minimum((np.arange(size[1]) + 0.5) * array.shape[1] / size[1],
                      array.shape[1] - 1).astype(int)
    return array[rows][:, cols]


def rescale_size(height: int, width: int, bound: tuple[int, int]) -> tuple[int, int]:
    """mmcv's keep-ratio rescale: the largest size with long side <= max(bound) and short
    side <= min(bound)."""
    scale = min(max(bound) / max(height, width), min(bound) / min(height, width))
    return int(height * scale + 0.5), int(width * scale + 0.5)


def crop_box(height: int, width: int, crop: tuple[int, int], rng: np.random.Generator
             ) -> tuple[slice, slice]:
    top = int(rng.integers(0, max(height - crop[0], 0) + 1))
    left = int(rng.integers(0, max(width - crop[1], 0) + 1))
    return slice(top, top + crop[0]), slice(left, left + crop[1])


def seg_crop_box(label: np.ndarray, crop: tuple[int, int], cat_max_ratio: float,
                 rng: np.random.Generator) -> tuple[slice, slice]:
    """mmseg's RandomCrop: up to 10 draws until no class covers ``cat_max_ratio`` of it."""
    box = crop_box(*label.shape, crop, rng)
    if cat_max_ratio < 1.0:
        for _ in range(10):
            values, counts = np.unique(label[box], return_counts=True)
            counts = counts[values != IGNORE]
            if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
                break
            box = crop_box(*label.shape, crop, rng)
    return box


def _convert(values: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    """``values * alpha + beta``, clipped and truncated to uint8 levels (as mmseg does)."""
    return np.clip(values.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8) \
        .astype(np.float32)


def rgb_to_hsv(image: np.ndarray) -> np.ndarray:
    """OpenCV's 8-bit HSV: hue in 0..180 (degrees / 2), saturation and value in 0..255."""
    rgb = image.astype(np.float32) / 255.0
    v = rgb.max(-1)
    c = v - rgb.min(-1)
    s = np.where(v > 0, c / np.maximum(v, 1e-12), 0.0)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    safe = np.maximum(c, 1e-12)
    h = np.where(v == r, (g - b) / safe, np.where(v == g, 2 + (b - r) / safe, 4 + (r - g) / safe))
    h = np.where(c > 0, (h * 60) % 360, 0.0)
    return np.stack([np.round(h / 2) % 180, np.round(s * 255), np.round(v * 255)], -1)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    h = hsv[..., 0].astype(np.float32) * 2 / 60
    s, v = hsv[..., 1] / 255.0, hsv[..., 2] / 255.0
    i = np.floor(h).astype(int) % 6
    f = h - np.floor(h)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    choices = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    rgb = np.zeros(hsv.shape, np.float32)
    for k, (r, g, b) in enumerate(choices):
        sel = i == k
        rgb[sel] = np.stack([r[sel], g[sel], b[sel]], -1)
    return np.round(rgb * 255).astype(np.float32)


def photometric_distortion(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """mmseg's PhotoMetricDistortion: brightness +-32, contrast 0.5..1.5 (before or after the
    colour steps), saturation 0.5..1.5, hue +-18 (OpenCV units); each with probability 0.5."""
    img = _convert(image)
    if rng.integers(2):
        img = _convert(img, beta=rng.uniform(-32, 32))
    mode = rng.integers(2)
    if mode == 1 and rng.integers(2):
        img = _convert(img, alpha=rng.uniform(0.5, 1.5))
    if rng.integers(2):
        hsv = rgb_to_hsv(img)
        hsv[..., 1] = _convert(hsv[..., 1], alpha=rng.uniform(0.5, 1.5))
        img = hsv_to_rgb(hsv)
    if rng.integers(2):
        hsv = rgb_to_hsv(img)
        hsv[..., 0] = (hsv[..., 0].astype(int) + int(rng.integers(-18, 18))) % 180
        img = hsv_to_rgb(hsv)
    if mode == 0 and rng.integers(2):
        img = _convert(img, alpha=rng.uniform(0.5, 1.5))
    return img


def pad_to(array: np.ndarray, size: tuple[int, int], value) -> np.ndarray:
    """Pad bottom and right up to (h, w), as mmseg's Pad does; ``value`` per channel or one."""
    dh, dw = max(size[0] - array.shape[0], 0), max(size[1] - array.shape[1], 0)
    if not dh and not dw:
        return array
    out = np.empty((array.shape[0] + dh, array.shape[1] + dw, *array.shape[2:]), array.dtype)
    out[...] = np.asarray(value, dtype=array.dtype)
    out[:array.shape[0], :array.shape[1]] = array
    return out


def seg_train_view(image: np.ndarray, label: np.ndarray, protocol: SegProtocol,
                   rng: np.random.Generator, fill: tuple[float, float, float] = (0, 0, 0)
                   ) -> tuple[np.ndarray, np.ndarray]:
    """One augmented (image, label) pair of the paper's segmentation pipeline.

    ``fill`` pads the image: the normalisation mean (x 255) makes padded pixels 0 after
    normalising, as mmseg's ``Pad`` after ``Normalize`` leaves them.
    """
    image = image.astype(np.float32)
    ratio = rng.uniform(*protocol.ratio_range)
    bound = (int(protocol.scale[0] * ratio), int(protocol.scale[1] * ratio))
    size = rescale_size(*image.shape[:2], bound)
    image, label = resize_image(image, size), resize_nearest(label, size)
    box = seg_crop_box(label, protocol.crop, protocol.cat_max_ratio, rng)
    image, label = image[box], label[box]
    if rng.random() < protocol.flip_prob:
        image, label = image[:, ::-1], label[:, ::-1]
    if protocol.photometric:
        image = photometric_distortion(image, rng)
    return (pad_to(np.ascontiguousarray(image), protocol.crop, fill),
            pad_to(np.ascontiguousarray(label), protocol.crop, IGNORE))


def rotate(array: np.ndarray, degrees: float, nearest: bool) -> np.ndarray:
    """Rotation about the centre, zero border (mmcv.imrotate without auto bound)."""
    t = torch.from_numpy(np.ascontiguousarray(array, np.float32))
    t = (t.permute(2, 0, 1) if t.dim() == 3 else t[None])[None]
    a = math.radians(degrees)
    h, w = array.shape[:2]
    # normalised coordinates: scale x/y so the rotation is a true rotation in pixels
    theta = torch.tensor([[math.cos(a), -math.sin(a) * h / w, 0.0],
                          [math.sin(a) * w / h, math.cos(a), 0.0]], dtype=torch.float32)
    grid = F.affine_grid(theta[None], list(t.shape), align_corners=False)
    out = F.grid_sample(t, grid, mode="nearest" if nearest else "bilinear",
                        padding_mode="zeros", align_corners=False)[0]
    return (out.permute(1, 2, 0) if array.ndim == 3 else out[0]).numpy()


def color_aug(image: np.ndarray, gamma: float, brightness: float, colors: np.ndarray
              ) -> np.ndarray:
    """The depth toolbox's ColorAug, on 0..255 values as it applies it (so gamma > 1 also
    brightens; the result is clipped to 0..255)."""
    return np.clip(image.astype(np.float32) ** gamma * brightness * colors.reshape(1, 1, 3),
                   0, 255)


def depth_pre_crop(image: np.ndarray, depth: np.ndarray | None, kind: str | None):
    """NYUCrop (rows 45:472, columns 43:608) or KBCrop (bottom 352 rows, centre 1216 columns)."""
    if kind == "nyu":
        box = NYU_CROP
    elif kind == "kitti":
        h, w = image.shape[:2]
        top, left = int(h - KITTI_CROP[0]), int((w - KITTI_CROP[1]) / 2)
        box = (slice(max(top, 0), max(top, 0) + KITTI_CROP[0]),
               slice(max(left, 0), max(left, 0) + KITTI_CROP[1]))
    else:
        return image, depth
    return image[box], (depth[box] if depth is not None else None)


def depth_train_view(image: np.ndarray, depth: np.ndarray, protocol: DepthProtocol,
                     rng: np.random.Generator, fill: tuple[float, float, float] = (0, 0, 0)
                     ) -> tuple[np.ndarray, np.ndarray]:
    """One augmented (image, depth) pair of the paper's depth pipeline (its crops always fit
    the authors' datasets; smaller images are padded with ``fill`` and unknown depth)."""
    image, depth = depth_pre_crop(image.astype(np.float32), depth, protocol.pre_crop)
    rotate_now = rng.random() < protocol.rotate_prob
    degree = rng.uniform(-protocol.rotate_degree, protocol.rotate_degree)
    if rotate_now:
        image, depth = rotate(image, degree, False), rotate(depth, degree, True)
    if rng.random() < protocol.flip_prob:
        image, depth = image[:, ::-1], depth[:, ::-1]
    box = crop_box(*depth.shape, protocol.crop, rng)
    image, depth = image[box], depth[box]
    if rng.random() < protocol.color_prob:
        gamma = rng.uniform(*protocol.gamma_range)
        brightness = rng.uniform(*protocol.brightness_range)
        image = color_aug(image, gamma, brightness, rng.uniform(*protocol.color_range, size=3))
    return (pad_to(np.ascontiguousarray(image), protocol.crop, fill),
            pad_to(np.ascontiguousarray(depth), protocol.crop, 0.0))


def eval_mask(depth: np.ndarray, kind: str | None) -> np.ndarray:
    """Pixels the depth metrics count beyond the valid range: the eigen crop (rows 45:471,
    columns 41:601) or Garg's crop (fractions of the image), or everything."""
    mask = np.zeros(depth.shape, bool)
    h, w = depth.shape
    if kind == "eigen":
        mask[45:471, 41:601] = True
    elif kind == "garg":
        mask[int(0.40810811 * h):int(0.99189189 * h), int(0.03594771 * w):int(0.96405229 * w)] \
            = True
    else:
        mask[:] = True
    return mask
