"""Images for GMAE: an image folder (or a Hugging Face dataset), decoded and augmented in
DataLoader workers as MAE does (random resized crop, horizontal flip, ImageNet statistics).

Every sample's randomness comes from ``(seed, epoch, index)`` and every epoch's order from
``(seed, epoch)``, so a resumed run sees what the uninterrupted one would have, however many
workers decode. An image is checked by its header (its pixel count against ``max_pixels``)
before it is decoded.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from fit3d_hub.errors import FiT3DError
from fit3d_hub.transforms import normalize

SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm")


class ImageDataError(FiT3DError, ValueError):
    """An image folder or file that cannot be trained on; the message names it."""


def list_images(folder: str | Path) -> list[Path]:
    """Every image file below ``folder`` (an ``imagefolder`` layout: class folders or not),
    sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageDataError(f"{folder}: no such image folder")
    found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file())
    if not found:
        raise ImageDataError(f"{folder}: no images (expected {', '.join(SUFFIXES)} files "
                             "anywhere below it)")
    return found


def crop_box(width: int, height: int, rng: np.random.Generator, scale: tuple[float, float],
             ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """torchvision's ``RandomResizedCrop.get_params`` on a NumPy generator: (top, left,
    height, width) of a random crop, the whole-image centre crop after 10 misses."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            return top, int(rng.integers(0, width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


@dataclass
class Augment:
    size: int
    scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> torch.Tensor:
        top, left, h, w = crop_box(image.width, image.height, rng, (self.scale, 1.0))
        crop = image.resize((self.size, self.size), Image.BICUBIC,
                            box=(left, top, left + w, top + h))
        if rng.random() < 0.5:
            crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
        x = torch.from_numpy(np.asarray(crop, dtype=np.uint8).copy()).permute(2, 0, 1)
        return normalize(x.float() / 255.0, self.mean, self.std)


class TrainingImages(torch.utils.data.Dataset):
    """Items are ``(epoch, index)`` keys; each gives ``{"image": (3, S, S), "skipped": n}``
    (``n`` unreadable files passed over on the way, with ``skip_unreadable``)."""

    def __init__(self, source: list[Path] | object, augment: Augment, *, seed: int,
                 min_side: int, max_pixels: int, skip_unreadable: bool):
        self.source, self.augment, self.seed = source, augment, seed
        self.min_side, self.max_pixels = min_side, max_pixels
        self.skip_unreadable = skip_unreadable

    def __len__(self) -> int:
        return len(self.source)

    def _open(self, index: int) -> Image.Image:
        item = self.source[index]
        if isinstance(item, Path):
            where, opened = str(item), item
        else:  # a Hugging Face dataset row, undecoded: {"bytes", "path"}
            cell = item["image"]
            where = f"dataset row {index}" + (f" ({cell['path']})" if cell.get("path") else "")
            opened = io.BytesIO(cell["bytes"]) if cell.get("bytes") else cell.get("path")
            if opened is None:
                raise ImageDataError(f"{where}: the row holds neither bytes nor a path")
        try:
            image = Image.open(opened)  # reads the header only; pixels wait for convert()
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as err:
            raise ImageDataError(f"{where}: not a readable image ({err})") from None
        if image.width * image.height > self.max_pixels:
            raise ImageDataError(f"{where}: {image.width}x{image.height} pixels is over "
                                 f"--max-pixels {self.max_pixels}; not decoded")
        if min(image.size) < self.min_side:
            raise ImageDataError(f"{where}: {image.width}x{image.height} is smaller than one "
                                 f"{self.min_side}-pixel patch")
        try:
            return image.convert("RGB")
        except (OSError, ValueError) as err:  # truncated or corrupt data
            raise ImageDataError(f"{where}: not a readable image ({err})") from None

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, index = key
        skipped = 0
        for attempt in range(len(self.source)):
            at = (index + attempt) % len(self.source)
            try:
                image = self._open(at)
            except ImageDataError:
                if not self.skip_unreadable:
                    raise
                skipped += 1
                continue
            rng = np.random.default_rng([self.seed, epoch, at])
            return {"image": self.augment(image, rng), "skipped": skipped}
        raise ImageDataError("no readable image in the whole source")


def hf_images(spec: str, cache_dir: str | None) -> object:
    """``hf:NAME[:SPLIT]``: a Hugging Face dataset with an ``image`` column (offline mode and
    the cache honoured as ``datasets`` does)."""
    try:
        import datasets
    except ImportError:
        raise ImageDataError(f"{spec}: reading a Hugging Face dataset needs the 'datasets' "
                             "package (pip install datasets)") from None
    name, _, split = spec[len("hf:"):].partition(":")
    try:
        data = datasets.load_dataset(name, split=split or "train", cache_dir=cache_dir)
    except Exception as err:  # the library's own errors, of many kinds
        raise ImageDataError(f"{spec}: {type(err).__name__}: {err}") from None
    if "image" not in data.column_names:
        raise ImageDataError(f"{spec}: no 'image' column (columns: {data.column_names})")
    # Undecoded, so each row passes the same size checks as a file before its pixels exist.
    return data.cast_column("image", datasets.Image(decode=False))


def epoch_batches(count: int, epoch: int, *, seed: int, batch_size: int, rank: int,
                  world: int) -> list[list[tuple[int, int]]]:
    """This process's batches of ``(epoch, index)`` keys for one epoch: one seeded order of
    every image, dealt across processes, incomplete batches dropped (as MAE's loader)."""
    order = np.random.default_rng([seed, epoch]).permutation(count)
    per_step = batch_size * world
    batches = []
    for start in range(0, count - per_step + 1, per_step):
        mine = order[start + rank * batch_size:start + (rank + 1) * batch_size]
        batches.append([(epoch, int(i)) for i in mine])
    return batches
